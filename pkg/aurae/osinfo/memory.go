package osinfo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"

	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

const meminfoPath = "/proc/meminfo"

func (s *Service) memory(context.Context, *emptypb.Empty) (*osapi.MemoryResponse, error) {
	b, err := os.ReadFile(meminfoPath)
	if err != nil {
		return nil, err
	}
	mi, err := parseMeminfo(b)
	if err != nil {
		return nil, err
	}
	return &osapi.MemoryResponse{Messages: []*osapi.Memory{{Metadata: s.meta(), Meminfo: mi}}}, nil
}

// parseMeminfo reads /proc/meminfo: each "Key: value [kB]" line goes to
// the MemInfo field named as the key in lower case without '(', ')' and
// '_' ("Active(anon)" is activeanon, "Committed_AS" committedas); kB
// values become bytes. Keys without a field (DirectMap*, newer kernels'
// additions) are skipped.
func parseMeminfo(b []byte) (*osapi.MemInfo, error) {
	mi := &osapi.MemInfo{}
	m := mi.ProtoReflect()
	fields := m.Descriptor().Fields()
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := strings.ToLower(strings.NewReplacer("(", "", ")", "", "_", "").Replace(key))
		fd := fields.ByName(protoreflect.Name(name))
		if fd == nil {
			continue
		}
		val := strings.Fields(rest)
		if len(val) == 0 {
			return nil, fmt.Errorf("%s: %q has no value", meminfoPath, key)
		}
		v, err := strconv.ParseUint(val[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", meminfoPath, key, err)
		}
		if len(val) > 1 && val[1] == "kB" {
			v *= 1024
		}
		m.Set(fd, protoreflect.ValueOfUint64(v))
	}
	return mi, sc.Err()
}
