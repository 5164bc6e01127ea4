// Package resilience holds what every PlasmaCloud client needs to survive a
// replicated, occasionally failing backend: retry with exponential backoff
// and jitter ([Retry], [Policy]), pooled HTTP/2 transports with keepalive
// pings ([NewHTTPClient], [Pool]) and a rotating set of endpoints
// ([Endpoints]).
//
// The pieces are independent and composable. A typical multi-endpoint client
// does, for every call:
//
//	err := resilience.Retry(ctx, policy, func(ctx context.Context) error {
//		url := endpoints.Pick()
//		err := callOn(ctx, pool.Client(url), url)
//		if err != nil && policy.Retryable(err) {
//			endpoints.Failed(url) // the next attempt goes to another member
//		}
//		return err
//	})
//
// Retry only ever retries errors the policy calls retryable, and never past
// the caller's context: a cancelled or expired ctx ends the loop at once, and
// the error returned then wraps both the context's error and the last
// attempt's error so the caller sees why it gave up.
//
// Nothing in this package keeps global state; every value is safe for
// concurrent use unless its documentation says otherwise.
package resilience
