package tracing

import "testing"

func TestCheckEndpoint(t *testing.T) {
	for _, ok := range []string{"", "127.0.0.1:4317", "[::1]:4317", "localhost:4317"} {
		if err := CheckEndpoint(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1:4317", "collector.example:4317", "127.0.0.1", "0.0.0.0:4317", "http://127.0.0.1:4317"} {
		if err := CheckEndpoint(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
