package driver

import (
	"strings"
	"sync"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
)

// subscriberBuffer is how many events a subscriber may fall behind before it loses some (and is
// sent EventResync once it catches up).
const subscriberBuffer = 256

// hub fans events out to subscribers. publish never blocks: a full subscriber loses the event.
type hub struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

type subscriber struct {
	ch   chan Event
	lost bool // events were dropped; send EventResync before the next one
}

func (h *hub) subscribe() *subscriber {
	s := &subscriber{ch: make(chan Event, subscriberBuffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[*subscriber]struct{}{}
	}
	h.subs[s] = struct{}{}
	return s
}

// unsubscribe removes s and closes its channel (under the lock, so no publish races the close).
func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

func (h *hub) publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.lost {
			select {
			case s.ch <- Event{Type: EventResync, Time: ev.Time}:
				s.lost = false
			default:
				continue
			}
		}
		select {
		case s.ch <- ev:
		default:
			s.lost = true
		}
	}
}

// idOf returns the VM id of a PlasmaVMC domain name.
func idOf(domainName string) (string, bool) {
	return strings.CutPrefix(domainName, DomainPrefix)
}

// lifecycleEvent translates a libvirt lifecycle event (event, detail as in libvirt's
// virDomainEventType and its detail enums).
func lifecycleEvent(m libvirt.DomainEventLifecycleMsg, now time.Time) (Event, bool) {
	id, ok := idOf(m.Dom.Name)
	if !ok {
		return Event{}, false
	}
	ev := Event{ID: id, Time: now}
	pick := func(names ...string) string {
		if int(m.Detail) < len(names) {
			return names[m.Detail]
		}
		return "unknown"
	}
	switch libvirt.DomainEventType(m.Event) {
	case libvirt.DomainEventDefined:
		ev.Type, ev.Reason = EventDefined, pick("added", "updated", "renamed", "from-snapshot")
	case libvirt.DomainEventUndefined:
		ev.Type, ev.Reason = EventUndefined, pick("removed", "renamed")
	case libvirt.DomainEventStarted:
		ev.Type, ev.Reason = EventStarted, pick("booted", "migrated", "restored", "from-snapshot", "wakeup")
	case libvirt.DomainEventSuspended:
		ev.Type, ev.Reason = EventSuspended, pick("paused", "migrated", "ioerror", "watchdog", "restored",
			"from-snapshot", "api-error", "postcopy", "postcopy-failed")
	case libvirt.DomainEventResumed:
		ev.Type, ev.Reason = EventResumed, pick("unpaused", "migrated", "from-snapshot", "postcopy")
	case libvirt.DomainEventStopped:
		ev.Type, ev.Reason = EventStopped, pick("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot")
		ev.Unexpected = ev.Reason == "crashed" || ev.Reason == "failed"
	case libvirt.DomainEventShutdown:
		ev.Type, ev.Reason = EventShutdown, pick("finished", "guest", "host")
	case libvirt.DomainEventCrashed:
		ev.Type, ev.Reason = EventCrashed, pick("panicked", "crashloaded")
		ev.Unexpected = true
	default:
		return Event{}, false // pm-suspended and anything newer: not used by PlasmaVMC
	}
	return ev, true
}

// watchdogActions are libvirt's virDomainEventWatchdogAction names.
var watchdogActions = []string{"none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi"}

// stateOf translates libvirt's virDomainState and its reason enum.
func stateOf(state, reason int32) (State, string) {
	pick := func(names ...string) string {
		if reason >= 0 && int(reason) < len(names) {
			return names[reason]
		}
		return "unknown"
	}
	switch libvirt.DomainState(state) {
	case libvirt.DomainRunning:
		return StateRunning, pick("unknown", "booted", "migrated", "restored", "from-snapshot", "unpaused",
			"migration-canceled", "save-canceled", "wakeup", "crashed", "postcopy")
	case libvirt.DomainBlocked:
		return StateRunning, "blocked"
	case libvirt.DomainPaused:
		return StatePaused, pick("unknown", "user", "migration", "save", "dump", "ioerror", "watchdog",
			"from-snapshot", "shutting-down", "snapshot", "api-error", "starting-up", "postcopy", "postcopy-failed")
	case libvirt.DomainShutdown:
		return StateShuttingDown, pick("unknown", "user")
	case libvirt.DomainShutoff:
		return StateShutoff, pick("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved",
			"failed", "from-snapshot", "daemon")
	case libvirt.DomainCrashed:
		return StateCrashed, pick("unknown", "panicked")
	case libvirt.DomainPmsuspended:
		return StateSuspended, pick("unknown")
	}
	return StateUnknown, "unknown"
}
