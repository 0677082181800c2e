package observe

import (
	"sync"
)

// entry is one line of a process's output.
type entry struct {
	text string
	at   int64 // unix nanoseconds
}

// ring keeps the newest lines of one output stream of one process, bounded by
// a line count and a byte count. Every line gets a sequence number; readers
// keep their own cursor, so a writer never waits for a reader: a reader that
// falls more than the ring's size behind loses the lines in between and is
// told how many.
type ring struct {
	maxLines int
	maxBytes int

	mu    sync.Mutex
	lines []entry // lines[start:] are retained, oldest first
	start int
	first uint64 // sequence number of lines[start]
	bytes int    // sum of len(text) of the retained lines
	eof   bool
	// wake is closed (and replaced) whenever a line is appended or the
	// stream ends, waking every waiting reader.
	wake chan struct{}
}

func newRing(maxLines, maxBytes int) *ring {
	return &ring{maxLines: maxLines, maxBytes: maxBytes, wake: make(chan struct{})}
}

// append adds a line, evicting the oldest ones while the ring is over its
// bounds (the newest line is always kept).
func (r *ring) append(e entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.eof {
		return
	}
	r.lines = append(r.lines, e)
	r.bytes += len(e.text)
	for n := len(r.lines) - r.start; n > 1 && (n > r.maxLines || r.bytes > r.maxBytes); n-- {
		r.bytes -= len(r.lines[r.start].text)
		r.lines[r.start] = entry{}
		r.start++
		r.first++
	}
	// Compact once the dead prefix is as long as the live part, so memory
	// stays proportional to what is retained.
	if r.start > 0 && r.start >= len(r.lines)-r.start {
		n := copy(r.lines, r.lines[r.start:])
		clear(r.lines[n:])
		r.lines = r.lines[:n]
		r.start = 0
	}
	r.notifyLocked()
}

// close marks the end of the stream.
func (r *ring) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.eof {
		return
	}
	r.eof = true
	r.notifyLocked()
}

func (r *ring) notifyLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// oldest returns the sequence number of the oldest retained line: the cursor
// of a reader that wants everything still buffered.
func (r *ring) oldest() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first
}

// readResult is what one read returns.
type readResult struct {
	lines   []entry
	next    uint64        // cursor for the following read
	dropped uint64        // lines evicted before this reader got them
	done    bool          // stream ended and every line up to next was read
	wait    chan struct{} // closed when there is more to read
}

// read copies up to max lines from sequence number from on.
func (r *ring) read(from uint64, max int) readResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res readResult
	if from < r.first {
		res.dropped = r.first - from
		from = r.first
	}
	end := r.first + uint64(len(r.lines)-r.start)
	if n := end - from; n > 0 {
		if n > uint64(max) {
			n = uint64(max)
		}
		i := r.start + int(from-r.first)
		res.lines = append([]entry(nil), r.lines[i:i+int(n)]...)
		from += n
	}
	res.next = from
	res.done = r.eof && from == end
	res.wait = r.wake
	return res
}
