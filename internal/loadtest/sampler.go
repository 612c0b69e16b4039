package loadtest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProcUsage is what a process used over an interval.
type ProcUsage struct {
	CPU        time.Duration `json:"cpu_ns"`      // user + system time in the interval
	CPUPercent float64       `json:"cpu_percent"` // of one core
	RSSStart   int64         `json:"rss_start_bytes"`
	RSSEnd     int64         `json:"rss_end_bytes"`
	RSSMax     int64         `json:"rss_max_bytes"` // highest sample in the interval
}

// Sampler reads a process's CPU time and resident memory every so often,
// keeping the highest RSS seen, until Stop.
type Sampler struct {
	pid   int
	start ProcStat
	t0    time.Time
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	mu     sync.Mutex
	rssMax int64
	usage  ProcUsage
}

// StartSampler starts sampling pid every interval.
func StartSampler(pid int, every time.Duration) *Sampler {
	s := &Sampler{pid: pid, t0: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	s.start, _ = ReadProc(pid)
	s.rssMax = s.start.RSS
	go s.loop(every)
	return s
}

func (s *Sampler) loop(every time.Duration) {
	defer close(s.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
			if st, err := ReadProc(s.pid); err == nil {
				s.mu.Lock()
				s.rssMax = max(s.rssMax, st.RSS)
				s.mu.Unlock()
			}
		}
	}
}

// Stop ends sampling and returns the usage over the whole interval. It is
// idempotent.
func (s *Sampler) Stop() ProcUsage {
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		end, _ := ReadProc(s.pid)
		elapsed := time.Since(s.t0)
		s.mu.Lock()
		defer s.mu.Unlock()
		u := ProcUsage{CPU: end.CPU - s.start.CPU, RSSStart: s.start.RSS, RSSEnd: end.RSS, RSSMax: max(s.rssMax, end.RSS)}
		if elapsed > 0 {
			u.CPUPercent = 100 * u.CPU.Seconds() / elapsed.Seconds()
		}
		s.usage = u
	})
	return s.usage
}

// SystemCPU is the whole machine's busy CPU time so far (all processes,
// from /proc/stat), to tell how much of the machine other processes used
// during a run.
func SystemCPU() (time.Duration, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat: %q", line)
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}
