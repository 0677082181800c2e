package nsexec

import (
	"os"
	"testing"
)

func BenchmarkStartTrue(b *testing.B) {
	for i := 0; i < b.N; i++ {
		p, err := Start(Spec{Path: "/bin/true", Args: []string{"true"}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOSExecTrue(b *testing.B) {
	for i := 0; i < b.N; i++ {
		p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}
