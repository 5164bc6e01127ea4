package server

import (
	"net"
	"os"
)

// Notify sends a systemd notification ("READY=1", "STOPPING=1", "STATUS=...") to
// $NOTIFY_SOCKET, for units with Type=notify. Without the variable it does nothing.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
