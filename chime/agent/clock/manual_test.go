package clock

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// TestManualFiresInOrder: what falls due within one Advance fires in the
// order of its due time, ties in the order it was set, each at its own
// time; callbacks may set timers that fire within the same Advance.
func TestManualFiresInOrder(t *testing.T) {
	m := NewManual(t0)
	var fired []string
	note := func(name string) func() {
		return func() { fired = append(fired, fmt.Sprintf("%s@%s", name, m.Now().Sub(t0))) }
	}
	m.AfterFunc(3*time.Second, note("c"))
	m.AfterFunc(time.Second, note("a"))
	m.AfterFunc(time.Second, note("b")) // same time as a, set after it
	m.AfterFunc(2*time.Second, func() {
		note("nested-parent")()
		m.AfterFunc(500*time.Millisecond, note("nested-child"))
	})
	stopped := m.AfterFunc(2*time.Second, note("stopped"))
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true once, then false")
	}
	late := m.AfterFunc(10*time.Second, note("late"))

	if at, ok := m.Next(); !ok || !at.Equal(t0.Add(time.Second)) {
		t.Fatalf("Next = %v, %v; want t0+1s", at, ok)
	}
	m.Advance(5 * time.Second)
	want := []string{"a@1s", "b@1s", "nested-parent@2s", "nested-child@2.5s", "c@3s"}
	if !slices.Equal(fired, want) {
		t.Fatalf("fired %q, want %q", fired, want)
	}
	if !m.Now().Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("now = %v, want t0+5s", m.Now())
	}
	if !late.Stop() {
		t.Fatal("a callback due later fired early")
	}
	if _, ok := m.Next(); ok {
		t.Fatal("Next reports something armed after everything fired or stopped")
	}
}

// TestManualTimersAndTickers: channels receive at their due time; a ticker
// holds one tick (the rest are dropped, as with package time); what is due
// now fires on Advance(0).
func TestManualTimersAndTickers(t *testing.T) {
	m := NewManual(t0)
	timer := m.NewTimer(2 * time.Second)
	ticker := m.NewTicker(time.Second)
	now := m.NewTimer(0)
	received := func(c <-chan time.Time) (time.Time, bool) {
		select {
		case v := <-c:
			return v, true
		default:
			return time.Time{}, false
		}
	}
	if _, ok := received(now.C()); ok {
		t.Fatal("a timer due now fired before any Advance")
	}
	m.Advance(0)
	if v, ok := received(now.C()); !ok || !v.Equal(t0) {
		t.Fatalf("timer due now after Advance(0): %v, %v", v, ok)
	}
	m.Advance(1500 * time.Millisecond)
	if v, ok := received(ticker.C()); !ok || !v.Equal(t0.Add(time.Second)) {
		t.Fatalf("tick = %v, %v; want t0+1s", v, ok)
	}
	if _, ok := received(timer.C()); ok {
		t.Fatal("timer fired before its time")
	}
	m.Advance(3 * time.Second) // ticks at 2s, 3s, 4s: one kept
	if v, ok := received(ticker.C()); !ok || !v.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("kept tick = %v, %v; want the first one not taken, t0+2s", v, ok)
	}
	if _, ok := received(ticker.C()); ok {
		t.Fatal("more than one tick kept")
	}
	if v, ok := received(timer.C()); !ok || !v.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("timer = %v, %v; want t0+2s", v, ok)
	}
	ticker.Stop()
	m.Advance(time.Hour)
	if _, ok := received(ticker.C()); ok {
		t.Fatal("a stopped ticker ticked")
	}
}

// TestSleep: Sleep returns true after its time, false when ctx ends first.
func TestSleep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, Wall{}, time.Hour) {
		t.Fatal("Sleep with an ended context returned true")
	}
	if !Sleep(context.Background(), Wall{}, time.Millisecond) {
		t.Fatal("Sleep of 1ms returned false")
	}
}
