# Profiles that attach to the running proxies instead of wrapping them (sourced by run.sh; uses
# its variables and functions): PROFILE=counts and PROFILE=smaps.
#
# PROFILE=counts: what one 1 KiB round trip costs each proxy, as counts rather than times.
#
# Around the `rr` phase of the relay and of meshd (ROUND_TRIPS round trips on one connection),
# with nothing else running through the proxies:
#   - `perf stat --per-thread -p PID` on each side: system calls by kind (kernel tracepoints,
#     counted in the kernel, nothing stops the process), those that failed with EAGAIN,
#     context switches, migrations, CPU time;
#   - /proc/PID/task/*/status before and after: voluntary context switches, i.e. the times a
#     thread went to sleep (each one a wake-up later), and involuntary ones (preemptions);
#   - the client namespace's link counters: packets (data and pure ACKs) and bytes (Ethernet
#     frames) each way; only the tunnel between the two proxies crosses the link.
# Every figure is divided by ROUND_TRIPS and recorded as `count.<what>.<side>`; the per-thread
# breakdown (which threads made the system calls) goes to PROFILE_DIR/counts.<mode>.<run>.txt.
# Then, for meshd only, FRAME_TRIPS more round trips with h2's frame log switched on through the
# admin endpoint (`h2::codec=debug`) and `strace -e writev` on both sides give the HTTP/2 frames
# sent and received and the TLS records written per round trip (`frames.*`, `tls.*`); the log and
# strace slow meshd down, which changes no count of a one-at-a-time exchange.

FRAME_TRIPS=${FRAME_TRIPS:-1000}
COUNT_SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait
    epoll_ctl futex sched_yield clock_gettime getsockopt setsockopt madvise mmap munmap brk"
COUNT_EVENTS=raw_syscalls:sys_enter
for call in $COUNT_SYSCALLS; do COUNT_EVENTS+=,syscalls:sys_enter_$call; done
COUNTERS=()

# Voluntary and involuntary context switches of all threads of a process.
switches() { # pid
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '
        /^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2}
        END {print v + 0, n + 0}'
}

# Packets and bytes each way on the client namespace's link: in the relay and meshd modes
# only the tunnel crosses it (each side's application connection stays inside its namespace).
link() {
    local d=/sys/class/net/veth0/statistics
    in_c cat $d/tx_packets $d/rx_packets $d/tx_bytes $d/rx_bytes | tr '\n' ' '
    echo
}

counts_start() { # mode
    local side pid
    COUNTERS=()
    for side in client server; do
        pid=$(pids_of "$1" | tr ',' '\n' | grep "^$side=" | cut -d= -f2)
        switches "$pid" >"$WORK/log/switches.$side.before"
        perf stat -x, --per-thread -o "$WORK/log/perf.$side" \
            -e "$COUNT_EVENTS,context-switches,cpu-migrations,task-clock" \
            -e raw_syscalls:sys_exit --filter 'ret == -11' -p "$pid" &
        COUNTERS+=($!)
    done
    link >"$WORK/log/link.before"
    sleep 0.5 # perf attaches to every thread
}

counts_stop() { # run mode round-trips
    local run=$1 m=$2 n=$3 side pid
    link >"$WORK/log/link.after"
    kill -INT "${COUNTERS[@]}"
    wait "${COUNTERS[@]}" 2>/dev/null || true
    mkdir -p "$PROFILE_DIR"
    : >"$PROFILE_DIR/counts.$m.$run.txt"
    for side in client server; do
        pid=$(pids_of "$m" | tr ',' '\n' | grep "^$side=" | cut -d= -f2)
        # perf's CSV: thread,value,unit,event,...; the EAGAIN filter's event is sys_exit.
        awk -F, -v n="$n" -v side="$side" '
            $2 ~ /^[0-9.]+$/ {
                e = $4; sub(/^(syscalls:sys_enter_|raw_syscalls:)/, "", e)
                if (e == "sys_enter") e = "syscalls"; if (e == "sys_exit") e = "eagain"
                if (e == "task-clock") { sum[e] += $2 * 1000; next } # ms → µs
                sum[e] += $2
            }
            END { for (e in sum) printf "count.%s.%s %.3f\n", e, side, sum[e] / n }' \
            "$WORK/log/perf.$side" | record "$run" "$m" ""
        {
            echo "# $m $side (pid $pid), $n round trips: thread, count, event"
            awk -F, '$2 ~ /^[0-9.]+$/ && $2 > 0 {print $1, $2, $4}' "$WORK/log/perf.$side"
        } >>"$PROFILE_DIR/counts.$m.$run.txt"
        read -r v0 i0 <"$WORK/log/switches.$side.before"
        read -r v1 i1 < <(switches "$pid")
        awk -v n="$n" -v side="$side" -v v=$((v1 - v0)) -v i=$((i1 - i0)) 'BEGIN {
            printf "count.sleeps.%s %.3f\ncount.preempted.%s %.3f\n", side, v / n, side, i / n}' |
            record "$run" "$m" ""
    done
    paste "$WORK/log/link.before" "$WORK/log/link.after" | awk -v n="$n" '{
        printf "link.packets_out %.3f\nlink.packets_in %.3f\n", ($5 - $1) / n, ($6 - $2) / n
        printf "link.bytes_out %.1f\nlink.bytes_in %.1f\n", ($7 - $3) / n, ($8 - $4) / n}' |
        record "$run" "$m" ""
}

# meshd's log filter, through the admin endpoint of its namespace.
log_filter() { # netns filter
    ip netns exec "$1" curl -sf -X POST -H 'x-meshd-admin: 1' \
        "http://127.0.0.1:15000/logging?level=$2" >/dev/null
}

# HTTP/2 frames and TLS records per round trip, for meshd.
counts_frames() { # run
    local run=$1 side ns pid lines=() tracers=()
    for side in client server; do
        ns=$NS_C pid=$MESHD_C
        [[ $side == server ]] && ns=$NS_S pid=$MESHD_S
        lines+=("$(wc -l <"$WORK/log/meshd-$side.err")")
        log_filter "$ns" 'info,h2::codec=debug'
        strace -f -qq -e trace=writev -e signal=none -o "$WORK/log/writev.$side" -p "$pid" &
        tracers+=($!)
    done
    sleep 1
    in_c "$TOOL" rr --to "$ECHO_ADDR" --count "$FRAME_TRIPS" --size 1024 >/dev/null
    sleep 0.5
    kill -INT "${tracers[@]}"
    wait "${tracers[@]}" 2>/dev/null || true
    local i=0
    for side in client server; do
        ns=$NS_C
        [[ $side == server ]] && ns=$NS_S
        log_filter "$ns" info
        # `send frame=Data { .. }` / `received frame=WindowUpdate { .. }`; the rr's own
        # connection adds one HEADERS each way and its close a few frames, under 0.01 a trip.
        tail -n +"$((lines[i] + 1))" "$WORK/log/meshd-$side.err" | sed -n \
            -e 's/.* send frame=\([A-Za-z]*\).*/sent \1/p' \
            -e 's/.* received frame=\([A-Za-z]*\).*/received \1/p' |
            sort | uniq -c | awk -v n="$FRAME_TRIPS" -v side="$side" '
                {printf "frames.%s.%s.%s %.3f\n", $2, $3, side, $1 / n}' |
            record "$run" meshd ""
        # Every writev of meshd is its TLS connection's (tokio-rustls writes records vectored;
        # the application socket gets send(2), the log write(2)); rustls gives each record its
        # own iovec.
        awk -v n="$FRAME_TRIPS" -v side="$side" '
            / writev\(/ {w++; r += gsub(/iov_base=/, "")}
            END {printf "tls.writev.%s %.3f\ntls.records_written.%s %.3f\n",
                 side, w / n, side, r / n}' "$WORK/log/writev.$side" |
            record "$run" meshd ""
        i=$((i + 1))
    done
}

# PROFILE=smaps: where each meshd's anonymous memory is before `hold` and once it has ended
# (SETTLE seconds after the held connections closed): its mappings with anonymous resident memory, largest
# first, and the heap figures of its metrics (meshd_heap_*: trims done, bytes glibc holds free),
# in PROFILE_DIR/smaps.<side>.<run>.{before,after}.txt. A glibc thread arena is a mapping that starts on a
# 64 MiB boundary (HEAP_MAX_SIZE); the main arena is [heap]; a thread's stack follows a guard
# page.
# The top chunk of each glibc thread arena: free memory at the end of the arena that
# `malloc_trim` leaves alone (it trims only the main arena's top) and that glibc shrinks only
# once it exceeds M_TRIM_THRESHOLD (meshd sets 32 MiB). Read from the process's memory: an
# arena's first heap starts with heap_info, whose first word points at the arena (malloc_state),
# whose `top` is at offset 96 on x86-64 glibc 2.26 and later (mutex, flags, have_fastchunks,
# ten fastbins); resident pages from /proc/PID/pagemap.
arena_tops() { # pid
    perl -e '
        my $pid = shift;
        open(my $maps, "<", "/proc/$pid/maps") or die;
        open(my $mem, "<:raw", "/proc/$pid/mem") or die;
        open(my $pm, "<:raw", "/proc/$pid/pagemap") or die;
        sub word { my ($fh, $at) = @_; sysseek($fh, $at, 0); sysread($fh, my $b, 8) == 8 or return;
                   return unpack("Q<", $b) }
        # Every heap of a thread arena (an arena grows by more 64 MiB heaps) points at it.
        my (@heaps, %arenas);
        while (<$maps>) {
            my ($s, $e, $perms, $name) = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/ or next;
            ($s, $e) = (hex $s, hex $e);
            next if $name ne "" || $perms ne "rw-p" || $s % (64 << 20);
            push @heaps, [$s, $e];
            my $arena = word($mem, $s) // next;
            $arenas{$arena}++ if $arena > $s && $arena < $e; # its first heap holds it
        }
        for my $arena (sort keys %arenas) {
            my $top = word($mem, $arena + 96) // next;
            next unless grep { $top >= $_->[0] && $top < $_->[1] } @heaps;
            my $size = (word($mem, $top + 8) // 0) & ~7;
            my $resident = 0;
            for (my $p = ($top + 4095) & ~4095; $p < $top + $size; $p += 4096) {
                my $entry = word($pm, $p / 4096 * 8) // next;
                $resident += 4 if $entry & (1 << 63);
            }
            printf "arena %x (%d heaps): top chunk %d KiB, %d KiB of it resident\n", $arena,
                scalar(grep { word($mem, $_->[0]) == $arena } @heaps), $size / 1024, $resident;
        }' "$1"
}

smaps_save() { # run.when
    local side pid ns ip out
    mkdir -p "$PROFILE_DIR"
    for side in client server; do
        pid=$MESHD_C ns=$NS_C ip=$CLIENT_IP
        [[ $side == server ]] && pid=$MESHD_S ns=$NS_S ip=$SERVER_IP
        out=$PROFILE_DIR/smaps.$side.$1.txt
        {
            echo "# meshd $side (pid $pid): anonymous resident KiB by mapping, $(date -u +%FT%TZ)"
            grep -E '^(RssAnon|VmRSS)' /proc/"$pid"/status
            perl -ne '
                if (/^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/) {
                    ($start, $perms, $name) = ($1, $3, $4);
                    $size = (hex($2) - hex($1)) / 1024;
                    $kind = $name;
                    if ($name eq "") {
                        $kind = "anon";
                        $kind = "arena (64 MiB aligned)" if hex($start) % (64 << 20) == 0;
                        $kind = "thread stack" if $prev_perms eq "---p" && $prev_size == 4;
                    }
                    ($prev_perms, $prev_size) = ($perms, $size);
                } elsif (/^Anonymous:\s+(\d+)/ && $1 > 0) {
                    printf "%8d KiB anon of %8d KiB  %s %s %s\n", $1, $size, $start, $perms, $kind;
                    $total += $1;
                }
                END { printf "%8d KiB anon in all\n", $total }' /proc/"$pid"/smaps | sort -rn
            arena_tops "$pid"
            ip netns exec "$ns" curl -sf "http://$ip:15020/metrics" | grep -E '^meshd_heap_' || true
        } >"$out"
    done
}
