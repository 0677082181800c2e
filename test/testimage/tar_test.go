package testimage

import (
	"archive/tar"
	"errors"
	"io"
)

// tarReader walks a tar stream's entry names and link targets.
type tarReader struct {
	tr  *tar.Reader
	h   *tar.Header
	err error
}

func newTarReader(r io.Reader) *tarReader { return &tarReader{tr: tar.NewReader(r)} }

func (t *tarReader) Next() bool {
	t.h, t.err = t.tr.Next()
	if errors.Is(t.err, io.EOF) {
		t.err = nil
		return false
	}
	return t.err == nil
}

func (t *tarReader) Name() string { return t.h.Name }
func (t *tarReader) Link() string { return t.h.Linkname }
func (t *tarReader) Err() error   { return t.err }
