package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// emit prints m as indented JSON with -o json, else as a table of the
// header and rows.
func (a *app) emit(m proto.Message, header []string, rows func() [][]string) error {
	if a.output == "json" {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	}
	if header == nil {
		return nil
	}
	return a.table(header, rows())
}

// emitLine prints a message of a stream: one JSON object per line with
// -o json, else text.
func (a *app) emitLine(m proto.Message, text string) error {
	if a.output == "json" {
		b, err := protojson.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(a.stdout, strings.TrimRight(text, "\n"))
	return err
}

func (a *app) table(header []string, rows [][]string) error {
	w := tabwriter.NewWriter(a.stdout, 0, 8, 3, ' ', 0)
	printLine(w, strings.Join(header, "\t"))
	for _, r := range rows {
		printLine(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

func itoa[T ~int32 | ~int64 | ~uint32 | ~uint64 | ~int](v T) string {
	return strconv.FormatInt(int64(v), 10)
}

// orDash shows an empty value as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// since is a kubectl-style age of a unix-nanosecond time.
func since(unixNano int64) string {
	if unixNano == 0 {
		return "-"
	}
	return time.Since(time.Unix(0, unixNano)).Round(time.Second).String()
}

// enumName is a proto enum's name without its type prefix, in lower case:
// CONTAINER_STATE_RUNNING is "running".
func enumName(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
