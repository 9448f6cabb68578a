package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/chime-ha/chime/chime/structs"
)

// Error is the JSON body of every non-2xx API answer:
// {"error": "...", "field": "..."}. Status is the HTTP status it travels
// with; Unwrap maps it back to the structs sentinel it stands for, so a
// caller writes errors.Is(err, ErrConflict) on either side of the
// wire.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Field   string `json:"field,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is match the sentinel the status stands for.
func (e *Error) Unwrap() error {
	switch e.Status {
	case http.StatusNotFound:
		return structs.ErrNotFound
	case http.StatusConflict:
		return structs.ErrConflict
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return structs.ErrInvalid
	case http.StatusForbidden, http.StatusUnauthorized:
		return structs.ErrForbidden
	case http.StatusServiceUnavailable:
		return structs.ErrNoLeader
	}
	return nil
}

// StatusOf maps any error to the HTTP status the API answers with. This is
// the one place where an error kind becomes a status code.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) && e.Status != 0 {
		return e.Status
	}
	switch {
	case errors.Is(err, structs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, structs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, structs.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, structs.ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, structs.ErrNoLeader):
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
	out := &Error{Status: StatusOf(err), Message: err.Error()}
	var se *structs.Error
	if errors.As(err, &se) {
		out.Field = se.Field
		if se.Message == err.Error() {
			out.Message = se.Message
		}
	}
	return out
}

// Unauthorized returns a 401 body: credentials are missing or unknown.
func Unauthorized(field, message string) *Error {
	return &Error{Status: http.StatusUnauthorized, Field: field, Message: message}
}

// WriteJSON writes v as the JSON body of an answer with the given status:
// the one writer of the agent's HTTP APIs (peer and local socket). An
// encoding error means the client went away: there is nobody to tell.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
