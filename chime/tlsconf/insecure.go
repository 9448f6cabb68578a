package tlsconf

import "time"

// RemindInsecure calls warn at once and then every interval until done is
// closed: a process running without TLS (--insecure-no-tls) keeps saying
// so in its log.
func RemindInsecure(done <-chan struct{}, every time.Duration, warn func()) {
	warn()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			warn()
		}
	}
}
