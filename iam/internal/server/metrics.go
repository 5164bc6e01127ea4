package server

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"plasmacloud.dev/iam/internal/policy"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/iam/internal/token"
)

// metrics are a replica's Prometheus collectors.
type metrics struct {
	reg            *prometheus.Registry
	tokens         *prometheus.CounterVec
	keyTransitions *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		reg: reg,
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iam_tokens_total",
			Help: "Token requests by grant type and outcome (issued, or the OAuth error refused with)."}, []string{"grant_type", "outcome"}),
		keyTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iam_key_transitions_total",
			Help: "Signing-key lifecycle transitions made by this replica (create, activate, remove)."}, []string{"transition"}),
	}
	reg.MustRegister(m.tokens, m.keyTransitions)
	return m
}

// watchers exports the number of open policy streams (including IAM's own feed).
func (m *metrics) watchers(v *policy.View) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iam_policy_watchers",
		Help: "Open WatchPolicy streams on this replica."}, func() float64 { return float64(v.Watchers()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iam_policy_revision",
		Help: "ChainFire revision the policy view reflects."}, func() float64 { return float64(v.Revision()) }))
}

func (m *metrics) tokenResult(grant string, err error) {
	switch grant {
	case token.GrantPassword, token.GrantClientCredentials, token.GrantRefreshToken:
	default:
		grant = "other"
	}
	outcome := "issued"
	switch {
	case err == nil:
	case errors.Is(err, token.ErrInvalidGrant):
		outcome = "invalid_grant"
	case errors.Is(err, token.ErrInvalidClient):
		outcome = "invalid_client"
	case errors.Is(err, token.ErrInvalidScope):
		outcome = "invalid_scope"
	case errors.Is(err, token.ErrInvalidRequest), errors.Is(err, token.ErrUnsupportedGrant):
		outcome = "invalid_request"
	case errors.Is(err, store.ErrLocked):
		outcome = "locked"
	default:
		outcome = "error"
	}
	m.tokens.WithLabelValues(grant, outcome).Inc()
}
