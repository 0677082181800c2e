package cri

import (
	"context"
	"fmt"
	"io"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// Exec of the fake echoes stdin to stdout and exits with len(argv).
func (f *fakeController) Exec(_ context.Context, id string, argv []string, sio controller.StreamIO) (int32, error) {
	if _, err := f.ContainerStatus(context.Background(), id); err != nil {
		return 0, err
	}
	if sio.Stdin != nil && sio.Stdout != nil {
		if _, err := io.Copy(sio.Stdout, sio.Stdin); err != nil {
			return 0, err
		}
	}
	if sio.Stderr != nil {
		_, _ = fmt.Fprintf(sio.Stderr, "%q\n", argv)
	}
	return int32(len(argv)), nil
}

// Attach of the fake writes one line.
func (f *fakeController) Attach(_ context.Context, id string, sio controller.StreamIO) error {
	if sio.Stdout != nil {
		_, _ = fmt.Fprintf(sio.Stdout, "attached to %s\n", id)
	}
	return nil
}
