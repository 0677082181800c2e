package guest

import (
	"log/slog"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	c := ParseCmdline("console=ttyS0 panic=-1 aurae.hostname=pod-a aurae.transport=vsock aurae.vsock_port=2000 aurae.port=aurae.1 aurae.log_level=debug")
	want := Config{Hostname: "pod-a", Transport: TransportVsock, Port: "aurae.1", VsockPort: 2000, LogLevel: slog.LevelDebug}
	if c != want {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	d := ParseCmdline("aurae.hostname= aurae.transport=tcp aurae.vsock_port=x aurae.port=../x aurae.log_level=loud\n")
	def := Config{Hostname: DefaultHostname, Transport: TransportVirtioSerial, Port: DefaultPort, VsockPort: DefaultVsockPort, LogLevel: slog.LevelInfo}
	if d != def {
		t.Fatalf("bad values: got %+v, want the defaults %+v", d, def)
	}
}
