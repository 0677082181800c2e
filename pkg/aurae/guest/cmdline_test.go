package guest

import (
	"log/slog"
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	c := ParseCmdline("console=ttyS0 panic=-1 aurae.hostname=pod-a aurae.transport=vsock aurae.vsock_port=2000 aurae.port=aurae.1 aurae.log_level=debug" +
		" aurae.virtiofs=aurae-shared:/run/aurae/shared aurae.virtiofs=two:/mnt/two aurae.tcg=1")
	want := Config{Hostname: "pod-a", Transport: TransportVsock, Port: "aurae.1", VsockPort: 2000, LogLevel: slog.LevelDebug,
		VirtioFS: []VirtioFSMount{{"aurae-shared", "/run/aurae/shared"}, {"two", "/mnt/two"}}, TCG: true}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	d := ParseCmdline("aurae.hostname= aurae.transport=tcp aurae.vsock_port=x aurae.port=../x aurae.log_level=loud" +
		" aurae.virtiofs=notag aurae.virtiofs=:/x aurae.virtiofs=t:relative aurae.virtiofs=t:/a/../b aurae.virtiofs=t:/ aurae.virtiofs=a/b:/x aurae.tcg=yes\n")
	def := Config{Hostname: DefaultHostname, Transport: TransportVirtioSerial, Port: DefaultPort, VsockPort: DefaultVsockPort, LogLevel: slog.LevelInfo}
	if !reflect.DeepEqual(d, def) {
		t.Fatalf("bad values: got %+v, want the defaults %+v", d, def)
	}
}
