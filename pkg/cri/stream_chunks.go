package cri

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// streamChunkBytes bounds the encoded items of one message of a Stream*
// list RPC (KEP-5825). The kubelet's client reads up to 16 MiB a message
// and other clients gRPC's default 4 MiB; at 1 MiB a message a node's 110
// pods with annotations at Kubernetes' cap (256 KiB each) go in a few dozen
// messages, none near either limit. An item larger than the budget goes
// alone in its message (an item is never split).
const streamChunkBytes = 1 << 20

// itemOverhead is what a repeated field adds to an item in its message:
// its tag and length prefix.
const itemOverhead = 8

// sendChunks sends items in order in as few messages as fit streamChunkBytes
// each, every item exactly once, and no message when there is none (the
// client reads EOF). It stops at the first failed send, or when ctx (the
// call's, with its deadline) ends.
func sendChunks[T proto.Message](ctx context.Context, what string, items []T, send func([]T) error) error {
	start, size := 0, 0
	flush := func(end int) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stream %s: %w", what, err)
		}
		if err := send(items[start:end]); err != nil {
			return fmt.Errorf("stream %s: %w", what, err)
		}
		start, size = end, 0
		return nil
	}
	for i, it := range items {
		n := proto.Size(it) + itemOverhead
		if i > start && size+n > streamChunkBytes {
			if err := flush(i); err != nil {
				return err
			}
		}
		size += n
	}
	if start < len(items) {
		return flush(len(items))
	}
	return nil
}
