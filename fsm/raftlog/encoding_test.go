package raftlog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func logsEqual(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

var sampleLogs = []struct {
	name string
	log  raft.Log
}{
	{"zero", raft.Log{}},
	{"command", raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("hello")}},
	{"all fields", raft.Log{
		Index: 42, Term: 7, Type: raft.LogConfiguration,
		Data: []byte{0, 1, 2, 255}, Extensions: []byte("ext"),
		AppendedAt: time.Date(2026, 11, 3, 12, 30, 45, 123456789, time.UTC),
	}},
	{"max values", raft.Log{
		Index: math.MaxUint64, Term: math.MaxUint64, Type: raft.LogType(255),
		AppendedAt: time.Unix(math.MaxInt32*4, 999_999_999),
	}},
	{"before 1970", raft.Log{Index: 3, Term: 2, Type: raft.LogNoop, AppendedAt: time.Date(1960, 1, 2, 3, 4, 5, 6, time.UTC)}},
	{"local time with monotonic reading", raft.Log{Index: 9, Term: 9, Type: raft.LogBarrier, AppendedAt: time.Now()}},
	{"empty non-nil data", raft.Log{Index: 5, Term: 1, Data: []byte{}, Extensions: []byte{}}},
	{"large data", raft.Log{Index: 6, Term: 1, Data: bytes.Repeat([]byte("x"), 1<<20)}},
}

func TestLogEncodingRoundTrip(t *testing.T) {
	for _, tc := range sampleLogs {
		t.Run(tc.name, func(t *testing.T) {
			enc := encodeLog(nil, &tc.log)
			if max := encodedLogSize(&tc.log); len(enc) > max {
				t.Errorf("encoded %d bytes, encodedLogSize promised at most %d", len(enc), max)
			}
			var got raft.Log
			if err := decodeLog(enc, &got); err != nil {
				t.Fatalf("decodeLog: %v", err)
			}
			if !logsEqual(&got, &tc.log) {
				t.Fatalf("round trip: got %+v, want %+v", got, tc.log)
			}
			// The decoded slices must not alias the input: the migration reads from
			// bbolt's memory, only valid inside its transaction.
			if len(got.Data) > 0 {
				for i := range enc {
					enc[i] = 0xAA
				}
				if !bytes.Equal(got.Data, tc.log.Data) {
					t.Fatal("decoded Data aliases the encoded buffer")
				}
			}
		})
	}
}

func TestLogDecodeCorrupt(t *testing.T) {
	valid := encodeLog(nil, &sampleLogs[2].log)
	cases := []struct {
		name string
		in   []byte
		want string // substring of the error
	}{
		{"empty", nil, "version: truncated"},
		{"unknown version", append([]byte{2}, valid[1:]...), "unknown encoding version 2"},
		{"trailing byte", append(append([]byte(nil), valid...), 0), "1 trailing bytes"},
		{"data length beyond input", []byte{1, 1, 1, 0, 0x80, 0x80, 0x04}, "data: length 65536 exceeds"},
		{"huge data length", append([]byte{1, 1, 1, 0}, binary.AppendUvarint(nil, math.MaxUint64)...), "data: length"},
		{"overlong uvarint", []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "index: bad uvarint"},
		{"bad time flag", []byte{1, 1, 1, 0, 0, 0, 7}, "bad appended_at flag 7"},
		{"nanoseconds out of range", append([]byte{1, 1, 1, 0, 0, 0, 1, 0}, binary.AppendUvarint(nil, 1_000_000_000)...), "out of range"},
	}
	// Every strict prefix of a valid record is truncated somewhere.
	for n := 0; n < len(valid); n++ {
		cases = append(cases, struct {
			name string
			in   []byte
			want string
		}{fmt.Sprintf("prefix %d of %d", n, len(valid)), valid[:n], "corrupt log record"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := raft.Log{Index: 77}
			got := before
			err := decodeLog(tc.in, &got)
			if err == nil {
				t.Fatalf("decodeLog(%x) = nil error, decoded %+v", tc.in, got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decodeLog(%x) error %q, want it to contain %q", tc.in, err, tc.want)
			}
			if !logsEqual(&got, &before) {
				t.Fatalf("failed decode modified the output: %+v", got)
			}
		})
	}
}

func FuzzDecodeLog(f *testing.F) {
	for _, tc := range sampleLogs {
		if len(tc.log.Data) > 1<<10 {
			continue
		}
		enc := encodeLog(nil, &tc.log)
		f.Add(enc)
		f.Add(enc[:len(enc)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeLog(b, &l); err != nil {
			return
		}
		// Whatever decodes must survive another round trip unchanged.
		var again raft.Log
		if err := decodeLog(encodeLog(nil, &l), &again); err != nil {
			t.Fatalf("re-encoded record does not decode: %v (first decode %+v)", err, l)
		}
		if !logsEqual(&l, &again) {
			t.Fatalf("round trip changed the record: %+v then %+v", l, again)
		}
	})
}
