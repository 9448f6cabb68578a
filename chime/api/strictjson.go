package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/chime-ha/chime/chime/structs"
)

// DecodeBody reads one JSON value from r into v strictly, the one decoder
// every API body (servers and agents) goes through:
//
//   - field names match exactly: Go's encoding/json matches them without
//     regard to case ("NAME" for "name"), which lets two spellings of one
//     field reach a server and be read differently by a proxy, a log or
//     another implementation; a field that matches only by case is refused,
//     naming it;
//   - unknown fields, duplicate keys (in any object, at any depth) and
//     data after the value are refused;
//   - an oversized body (http.MaxBytesReader) is a 413.
//
// Errors are *Error values naming the field (see BodyError).
func DecodeBody(r io.Reader, v any) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return BodyError(err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return structs.Invalid("body", "a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return BodyError(err)
	}
	if dec.More() {
		return structs.Invalid("body", "unexpected data after the JSON object")
	}
	if err := checkKeys(raw, reflect.TypeOf(v)); err != nil {
		return err
	}
	return nil
}

// BodyError turns an error of reading or decoding a body into an *Error
// that names the field or the body.
func BodyError(err error) error {
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, errBodyTimeout):
		return &Error{Status: http.StatusRequestTimeout, Field: "body",
			Message: "body: not received within the server's body read timeout"}
	case errors.As(err, &tooBig):
		return &Error{Status: http.StatusRequestEntityTooLarge, Field: "body",
			Message: fmt.Sprintf("body: larger than the limit of %d bytes", tooBig.Limit)}
	case errors.Is(err, io.EOF):
		return structs.Invalid("body", "a JSON object is required")
	case errors.As(err, &syntax):
		return structs.Invalid("body", "malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typ):
		return structs.Invalid(typ.Field, "must be a JSON %s, got %s", typ.Type, typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return structs.Invalid(f, "unknown field")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return structs.Invalid("body", "truncated JSON")
	}
	return structs.Invalid("body", "%v", err)
}

// checkKeys walks raw (already known to decode into t) and refuses
// duplicate keys and keys that name a field of t only up to case.
func checkKeys(raw []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return walkValue(dec, t, "")
}

func walkValue(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return BodyError(err)
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (t.Implements(unmarshaler) || reflect.PointerTo(t).Implements(unmarshaler)) {
		t = nil // decodes itself: only duplicate keys are checked below
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar: its type was checked by the decode
	}
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := walkValue(dec, elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = jsonFields(t)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return BodyError(err)
			}
			key, _ := kt.(string)
			field := joinPath(path, key)
			if seen[key] {
				return structs.Invalid(field, "duplicate key %q", key)
			}
			seen[key] = true
			next := elem
			if fields != nil {
				ft, exact := fields[key]
				if !exact {
					for name := range fields {
						if strings.EqualFold(name, key) {
							return structs.Invalid(field, "unknown field (field names are case-sensitive: %q)", joinPath(path, name))
						}
					}
				}
				next = ft
			}
			if err := walkValue(dec, next, field); err != nil {
				return err
			}
		}
		_, err = dec.Token() // '}'
		return err
	}
	return nil
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of t's fields (embedded structs'
// promoted ones included, as encoding/json does) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	collectFields(t, m, 0)
	fieldCache.Store(t, m)
	return m
}

func collectFields(t reflect.Type, m map[string]reflect.Type, depth int) {
	if depth > 8 {
		return
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				collectFields(et, m, depth+1)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, taken := m[name]; !taken {
			m[name] = ft
		}
	}
}
