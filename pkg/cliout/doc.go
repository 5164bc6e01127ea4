// Package cliout is the output plumbing of PlasmaCloud's client commands: the -o/--output
// flag (a human format, named per binary, or "json") and a [Printer] that writes results
// either for people (aligned tables and fields) or as JSON, one object per line, with
// protobuf messages in protojson under their proto field names.
//
// A Printer is used by one command at a time; it holds no state beyond its writer and
// format, and never buffers: every call writes through to the writer at once.
package cliout
