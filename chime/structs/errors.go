package structs

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on with errors.Is. Error wraps one of them.
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("conflict")
	ErrInvalid   = errors.New("invalid input")
	ErrForbidden = errors.New("forbidden")
	ErrNoLeader  = errors.New("no leader")
)

// Error is a refusal with a kind (one of the sentinels), the field it is
// about and a message for humans. It says nothing about transports: the API
// layer maps the kind to a status code.
type Error struct {
	Kind    error  // ErrNotFound, ErrConflict, ErrInvalid, ErrForbidden, ErrNoLeader or nil
	Field   string // the input field or record attribute at fault, if any
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is match the sentinel.
func (e *Error) Unwrap() error { return e.Kind }

// Invalid returns an input error naming the field and the rule it broke.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Kind: ErrInvalid, Field: field, Message: fmt.Sprintf("%s: %s", field, fmt.Sprintf(format, args...))}
}

// NotFound returns a not-found error.
func NotFound(field, format string, args ...any) *Error {
	return &Error{Kind: ErrNotFound, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Conflict returns a conflict error: the state does not allow the change.
func Conflict(field, format string, args ...any) *Error {
	return &Error{Kind: ErrConflict, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Forbidden returns an authorization error.
func Forbidden(format string, args ...any) *Error {
	return &Error{Kind: ErrForbidden, Message: fmt.Sprintf(format, args...)}
}

// IsNotFound reports whether err means the object does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// Error kinds by name, as they are recorded in the replicated request-dedup
// records (names, never status codes, so the record means the same to every
// version).
var kindNames = map[error]string{
	ErrNotFound: "not_found", ErrConflict: "conflict", ErrInvalid: "invalid",
	ErrForbidden: "forbidden", ErrNoLeader: "no_leader",
}

// KindName returns the stable name of err's kind ("" when it has none).
func KindName(err error) string {
	for k, name := range kindNames {
		if errors.Is(err, k) {
			return name
		}
	}
	return ""
}

// KindByName is the inverse of KindName (nil for an unknown name).
func KindByName(name string) error {
	for k, n := range kindNames {
		if n == name {
			return k
		}
	}
	return nil
}

// AsError returns err as an *Error (a plain error becomes one without a kind).
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Kind: nil, Message: err.Error()}
}
