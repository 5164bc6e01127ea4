package harness

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A delayQueue delays packets in user space, for kernels without tc netem: iptables
// rules in the hub namespace send the packets bridged to and from a host to an NFQUEUE
// queue, and the queue's reader — goroutines of the test process — accepts each packet
// once it has been held for the delay. Packets keep their order. Only the packets'
// metadata crosses to user space, never their contents.
//
// The delay is a lower bound: scheduling of the test process adds to it (milliseconds on
// a busy machine), unlike netem, which the kernel times exactly.
type delayQueue struct {
	f     *os.File // netlink socket, nonblocking, in the hub namespace
	num   uint16   // queue number
	delay atomic.Int64

	held     chan heldPacket // from reader to releaser, in arrival order
	flushing chan struct{}   // closed by close: every packet is due at once
	done     chan struct{}   // closed by close once drained: the goroutines end
	wg       sync.WaitGroup

	wmu      sync.Mutex   // serializes writes to f
	pending  atomic.Int64 // packets read and not yet accepted
	lastRead atomic.Int64 // UnixNano of the last packet read
}

// heldPacket is a queued packet and when to let it go.
type heldPacket struct {
	id  uint32
	due time.Time
}

// Netlink constants of nfnetlink_queue (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue      = 3
	nfqnlMsgPacket       = nfnlSubsysQueue << 8
	nfqnlMsgConfig       = nfnlSubsysQueue<<8 | 2
	nfqnlMsgVerdictBatch = nfnlSubsysQueue<<8 | 3
	nfqaPacketHdr        = 1
	nfqaVerdictHdr       = 2
	nfqaCfgCmd           = 1
	nfqaCfgParams        = 2
	nfqaCfgQueueMaxlen   = 3
	nfqaCfgMask          = 4
	nfqaCfgFlags         = 5
	nfqnlCfgCmdBind      = 1
	nfqnlCopyMeta        = 1
	nfqaCfgFFailOpen     = 1
	nfAccept             = 1
	nlmsgHdrLen          = 16
	nfgenHdrLen          = 4
	delayQueueMaxLen     = 100000
	delayRcvBuf          = 8 << 20
	// close waits until no packet has come for delayQuiet (at most delayDrain), so that
	// packets the kernel queued just before the rules went are accepted, not dropped.
	delayQuiet = 50 * time.Millisecond
	delayDrain = time.Second
)

// openDelayQueue binds queue num in the network namespace at nsPath (a /run/netns file)
// and starts holding its packets for d. The caller adds the rules that feed the queue
// after this returns, and removes them before close.
func openDelayQueue(nsPath string, num uint16, d time.Duration) (*delayQueue, error) {
	fd, err := netlinkSocketIn(nsPath)
	if err != nil {
		return nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		_ = syscall.Close(fd)
		return nil, fmt.Errorf("harness: binding netlink socket: %w", err)
	}
	// A full socket buffer would lose packets (fail-open lets them through undelayed).
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, delayRcvBuf)
	q := &delayQueue{
		f:        os.NewFile(uintptr(fd), "nfqueue"), // nonblocking: reads go through the poller, Close interrupts them
		num:      num,
		held:     make(chan heldPacket, delayQueueMaxLen),
		flushing: make(chan struct{}),
		done:     make(chan struct{}),
	}
	q.delay.Store(int64(d))
	flags := make([]byte, 4)
	binary.BigEndian.PutUint32(flags, nfqaCfgFFailOpen)
	maxLen := make([]byte, 4)
	binary.BigEndian.PutUint32(maxLen, delayQueueMaxLen)
	params := []byte{0, 0, 0, 0, nfqnlCopyMeta} // copy_range 0 (big endian), copy_mode
	err = q.request(nfqnlMsgConfig,
		nlattr(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0}), // command, pad, pf (unused since Linux 3.8)
		nlattr(nfqaCfgParams, params),
		nlattr(nfqaCfgQueueMaxlen, maxLen),
		nlattr(nfqaCfgFlags, flags),
		nlattr(nfqaCfgMask, flags),
	)
	if err != nil {
		_ = q.f.Close()
		return nil, fmt.Errorf("harness: binding NFQUEUE %d: %w", num, err)
	}
	q.wg.Add(2)
	go q.read()
	go q.release()
	return q, nil
}

// netlinkSocketIn opens a nonblocking NETLINK_NETFILTER socket in the namespace at
// nsPath. A socket belongs to the namespace it was created in, so it is created on a
// locked thread moved there and back.
//
// The thread must not die: children started with Pdeathsig (every harness Process) get
// SIGKILL when the thread that forked them exits, and any thread may have forked some.
// So the goroutine unlocks the thread once it is back in its own namespace, and in the
// unlikely case that it cannot get back, it parks forever, keeping the thread locked
// (and out of use) rather than letting the runtime terminate it.
func netlinkSocketIn(nsPath string) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("harness: %w", err)}
			return
		}
		defer home.Close()
		ns, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("harness: %w", err)}
			return
		}
		defer ns.Close()
		if err := setns(ns); err != nil {
			runtime.UnlockOSThread() // still at home
			ch <- result{-1, fmt.Errorf("harness: setns %s: %w", nsPath, err)}
			return
		}
		fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, syscall.NETLINK_NETFILTER)
		if err != nil {
			err = fmt.Errorf("harness: netlink socket: %w", err)
		}
		if herr := setns(home); herr != nil {
			if fd >= 0 {
				_ = syscall.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("harness: returning from %s: %w", nsPath, herr)}
			select {} // park, thread locked: see above
		}
		runtime.UnlockOSThread()
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// setns moves the calling thread into the network namespace f refers to.
func setns(f *os.File) error {
	if _, _, errno := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	return nil
}

// setDelay changes the delay of packets that arrive from now on.
func (q *delayQueue) setDelay(d time.Duration) { q.delay.Store(int64(d)) }

// close lets every held packet go at once, waits until the queue is quiet, and releases
// it. The rules feeding it must be gone; a packet still queued in the kernel when the
// socket closes is dropped (TCP retransmits it).
func (q *delayQueue) close() error {
	close(q.flushing)
	deadline := time.Now().Add(delayDrain)
	for time.Now().Before(deadline) &&
		(q.pending.Load() > 0 || time.Since(time.Unix(0, q.lastRead.Load())) < delayQuiet) {
		time.Sleep(5 * time.Millisecond)
	}
	close(q.done)
	err := q.f.Close()
	q.wg.Wait()
	return err
}

// read receives the queue's packets and hands them to release, stamped with their due
// time, until the socket is closed.
func (q *delayQueue) read() {
	defer q.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, err := q.f.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EINTR) {
				continue // overflow: the kernel let those packets through (fail-open)
			}
			return // closed
		}
		for msg := range netlinkMessages(buf[:n]) {
			typ := binary.NativeEndian.Uint16(msg[4:6])
			if typ != nfqnlMsgPacket || len(msg) < nlmsgHdrLen+nfgenHdrLen {
				continue
			}
			hdr := findAttr(msg[nlmsgHdrLen+nfgenHdrLen:], nfqaPacketHdr)
			if len(hdr) < 4 {
				continue
			}
			now := time.Now()
			q.lastRead.Store(now.UnixNano())
			q.pending.Add(1)
			p := heldPacket{id: binary.BigEndian.Uint32(hdr), due: now.Add(time.Duration(q.delay.Load()))}
			select {
			case q.held <- p:
			case <-q.done:
				return
			}
		}
	}
}

// release accepts the held packets in order, each once it is due; packets due together
// go in one batch verdict, which accepts every packet up to an id.
func (q *delayQueue) release() {
	defer q.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var next *heldPacket
	for {
		if next == nil {
			select {
			case p := <-q.held:
				next = &p
			case <-q.done:
				return
			}
		}
		if wait := time.Until(next.due); wait > 0 && !q.isFlushing() {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-q.flushing:
			case <-q.done:
				return
			}
		}
		last, n := next.id, int64(1)
		next = nil
	drain:
		for {
			select {
			case p := <-q.held:
				if p.due.After(time.Now()) && !q.isFlushing() {
					next = &p
					break drain
				}
				last, n = p.id, n+1
			default:
				break drain
			}
		}
		_ = q.send(nfqnlMsgVerdictBatch, 0, verdictAttr(last)) // fails only once closed
		q.pending.Add(-n)
	}
}

// isFlushing reports whether close has begun.
func (q *delayQueue) isFlushing() bool {
	select {
	case <-q.flushing:
		return true
	default:
		return false
	}
}

// request sends a message that the kernel acknowledges and waits for the answer. It is
// used before read starts, so it may read the socket itself.
func (q *delayQueue) request(typ uint16, attrs ...[]byte) error {
	if err := q.send(typ, syscall.NLM_F_ACK, attrs...); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	deadline := time.Now().Add(5 * time.Second)
	_ = q.f.SetReadDeadline(deadline)
	defer q.f.SetReadDeadline(time.Time{})
	for {
		n, err := q.f.Read(buf)
		if err != nil {
			return err
		}
		for msg := range netlinkMessages(buf[:n]) {
			if binary.NativeEndian.Uint16(msg[4:6]) != syscall.NLMSG_ERROR || len(msg) < nlmsgHdrLen+4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(msg[nlmsgHdrLen:])); errno != 0 {
				return syscall.Errno(-errno)
			}
			return nil
		}
	}
}

// send writes one nfnetlink message for the queue.
func (q *delayQueue) send(typ, flags uint16, attrs ...[]byte) error {
	size := nlmsgHdrLen + nfgenHdrLen
	for _, a := range attrs {
		size += len(a)
	}
	msg := make([]byte, nlmsgHdrLen, size)
	binary.NativeEndian.PutUint32(msg[0:4], uint32(size))
	binary.NativeEndian.PutUint16(msg[4:6], typ)
	binary.NativeEndian.PutUint16(msg[6:8], syscall.NLM_F_REQUEST|flags)
	// seq and port id 0: the kernel answers acknowledgements to this socket anyway.
	msg = append(msg, syscall.AF_UNSPEC, 0, byte(q.num>>8), byte(q.num)) // nfgenmsg; res_id big endian
	for _, a := range attrs {
		msg = append(msg, a...)
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	_, err := q.f.Write(msg)
	return err
}

// verdictAttr is the NFQA_VERDICT_HDR attribute accepting packet id (and, in a batch
// verdict, every packet before it).
func verdictAttr(id uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:4], nfAccept)
	binary.BigEndian.PutUint32(b[4:8], id)
	return nlattr(nfqaVerdictHdr, b)
}

// nlattr encodes a netlink attribute, padded to 4 bytes.
func nlattr(typ uint16, payload []byte) []byte {
	n := 4 + len(payload)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(n))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[4:], payload)
	return b
}

// netlinkMessages iterates over the netlink messages of one datagram.
func netlinkMessages(b []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(b) >= nlmsgHdrLen {
			n := int(binary.NativeEndian.Uint32(b[0:4]))
			if n < nlmsgHdrLen || n > len(b) {
				return
			}
			if !yield(b[:n]) {
				return
			}
			b = b[min((n+3)&^3, len(b)):]
		}
	}
}

// findAttr returns the payload of the first attribute of type typ in b, or nil.
func findAttr(b []byte, typ uint16) []byte {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		if n < 4 || n > len(b) {
			return nil
		}
		if binary.NativeEndian.Uint16(b[2:4])&0x3fff == typ { // without NLA_F_NESTED/NET_BYTEORDER
			return b[4:n]
		}
		b = b[min((n+3)&^3, len(b)):]
	}
	return nil
}
