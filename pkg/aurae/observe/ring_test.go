package observe

import (
	"fmt"
	"testing"
)

func TestRingKeepsNewestWithinLineBound(t *testing.T) {
	r := newRing(3, 1<<20)
	for i := range 10 {
		r.append(entry{text: fmt.Sprint(i)})
	}
	res := r.read(0, 100)
	if res.dropped != 7 {
		t.Fatalf("dropped = %d, want 7", res.dropped)
	}
	if got := texts(res.lines); fmt.Sprint(got) != "[7 8 9]" {
		t.Fatalf("lines = %v, want [7 8 9]", got)
	}
	if res.next != 10 || res.done {
		t.Fatalf("next = %d done = %v, want 10 false", res.next, res.done)
	}
}

func TestRingKeepsNewestWithinByteBound(t *testing.T) {
	r := newRing(1000, 25)
	for i := range 10 {
		r.append(entry{text: fmt.Sprintf("line-%04d", i)}) // 9 bytes each
	}
	res := r.read(r.oldest(), 100)
	if got := texts(res.lines); fmt.Sprint(got) != "[line-0008 line-0009]" {
		t.Fatalf("lines = %v", got)
	}
	if r.bytes != 18 {
		t.Fatalf("bytes = %d, want 18", r.bytes)
	}
}

func TestRingKeepsAnOversizedLine(t *testing.T) {
	r := newRing(10, 4)
	r.append(entry{text: "a"})
	r.append(entry{text: "much longer than four bytes"})
	res := r.read(0, 10)
	if got := texts(res.lines); len(got) != 1 || got[0] != "much longer than four bytes" {
		t.Fatalf("lines = %q", got)
	}
}

func TestRingReadInBatchesAndEOF(t *testing.T) {
	r := newRing(100, 1<<20)
	for i := range 5 {
		r.append(entry{text: fmt.Sprint(i)})
	}
	res := r.read(0, 2)
	if fmt.Sprint(texts(res.lines)) != "[0 1]" || res.next != 2 || res.done {
		t.Fatalf("first batch = %v next %d done %v", texts(res.lines), res.next, res.done)
	}
	wait := r.read(5, 2).wait
	r.close()
	select {
	case <-wait:
	default:
		t.Fatal("close did not wake a waiting reader")
	}
	r.append(entry{text: "after eof"})
	res = r.read(2, 10)
	if fmt.Sprint(texts(res.lines)) != "[2 3 4]" || !res.done {
		t.Fatalf("last batch = %v done %v", texts(res.lines), res.done)
	}
}

func TestRingMemoryStaysBounded(t *testing.T) {
	r := newRing(4, 1<<20)
	for i := range 10000 {
		r.append(entry{text: fmt.Sprint(i)})
	}
	if cap(r.lines) > 64 {
		t.Fatalf("ring of 4 lines holds a backing array of %d entries", cap(r.lines))
	}
	if got := fmt.Sprint(texts(r.read(0, 10).lines)); got != "[9996 9997 9998 9999]" {
		t.Fatalf("lines = %v", got)
	}
}

func texts(es []entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.text
	}
	return out
}
