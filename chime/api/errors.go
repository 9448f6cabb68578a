package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors callers branch on. Error wraps them.
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("conflict")
	ErrInvalid   = errors.New("invalid input")
	ErrForbidden = errors.New("forbidden")
	ErrNoLeader  = errors.New("no leader")
)

// Error is the JSON body of every non-2xx API answer:
// {"error": "...", "field": "..."}.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Field   string `json:"field,omitempty"`
	kind    error
}

func (e *Error) Error() string {
	if e.Field != "" && e.Message != "" {
		return e.Message
	}
	return e.Message
}

// Unwrap lets errors.Is match the sentinel the status stands for.
func (e *Error) Unwrap() error {
	if e.kind != nil {
		return e.kind
	}
	switch e.Status {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return ErrInvalid
	case http.StatusForbidden, http.StatusUnauthorized:
		return ErrForbidden
	case http.StatusServiceUnavailable:
		return ErrNoLeader
	}
	return nil
}

// Invalid returns a 400 error naming the field and the rule it broke.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Field: field,
		Message: fmt.Sprintf("%s: %s", field, fmt.Sprintf(format, args...)), kind: ErrInvalid}
}

// NotFound returns a 404 error.
func NotFound(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Field: field, Message: fmt.Sprintf(format, args...), kind: ErrNotFound}
}

// Conflict returns a 409 error.
func Conflict(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusConflict, Field: field, Message: fmt.Sprintf(format, args...), kind: ErrConflict}
}

// Forbidden returns a 403 error.
func Forbidden(format string, args ...any) *Error {
	return &Error{Status: http.StatusForbidden, Message: fmt.Sprintf(format, args...), kind: ErrForbidden}
}

// StatusOf maps any error to the HTTP status the API answers with.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) && e.Status != 0 {
		return e.Status
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrNoLeader):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// AsError converts any error into the API's error body.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		if e.Status == 0 {
			e.Status = StatusOf(err)
		}
		return e
	}
	return &Error{Status: StatusOf(err), Message: err.Error()}
}
