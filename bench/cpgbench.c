/*
 * The benchmark's C group client: libcpg (Debian's libcpg-dev), one per node, driven by
 * bench/driver.py (`--client c`) over a line protocol on stdin/stdout. The same binary drives
 * corosync and cmanlkd (cmanlkd serves corosync's libqb IPC, docs/libqb.md).
 *
 *     cpgbench GROUP
 *
 * It joins GROUP, prints {"ok": true, "nodeid": N} once its own join is in a confchg, then
 * answers one line per command:
 *
 *     round NUMBER SIZE SENDER DURATION_S RATE START_AT_NS TIMEOUT_S NSENDERS KEEP
 *
 * holds until CLOCK_MONOTONIC START_AT_NS (dispatching), sends SIZE-byte messages in agreed order
 * (flat out when RATE is 0, else RATE/s) for DURATION_S if SENDER is 1 (CS_ERR_TRY_AGAIN is flow
 * control: wait for the fd, dispatch, retry), then one LAST marker, and dispatches until NSENDERS
 * markers arrived or TIMEOUT_S passed. The answer is the JSON of bench/driver.py's rounds
 * (received, first_ns, last_ns, latencies, the send call's duration) plus the client's own CPU
 * (getrusage) and wall time over the round; with KEEP 1 also "deliveries": [[t_ns, sender, seq], ...]. Messages carry bench/driver.py's 28-byte HEADER
 * (<4sIHHQQ: magic, round, sender, kind, seq, t_send_ns), so every client counts the same way.
 *
 * `quit` (or end of input) leaves the group and exits.
 */
#include <corosync/cpg.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 200000
#define MAX_SENDERS 64
#define MAX_SIZE (1 << 20)
#define SEND_BATCH 16
#define KIND_DATA 0
#define KIND_LAST 1
#define HEADER_SIZE 28

struct round_state {
	uint32_t number;
	int active;
	long received;
	uint64_t first_ns, last_ns;
	uint32_t lasts[MAX_SENDERS];
	int n_lasts;
	uint32_t seq_sender[MAX_SENDERS];
	uint64_t seq_next[MAX_SENDERS];
	int n_seq;
	long out_of_order;
	int keep;
	long n_kept;
	uint64_t *lat;
	long n_lat;
};

struct kept {
	uint64_t t, seq;
	uint32_t sender;
};
static struct kept *kept;

static cpg_handle_t handle;
static unsigned int my_nodeid;
static uint32_t my_pid;
static int joined;
static struct round_state rs;
static uint64_t *calls;
static long n_calls;
static int lost;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void put_header(unsigned char *buf, uint32_t number, uint16_t kind, uint64_t seq, uint64_t t)
{
	uint16_t sender = (uint16_t)my_nodeid;
	memcpy(buf, "CMKB", 4);
	memcpy(buf + 4, &number, 4); /* little-endian host: the header is "<" */
	memcpy(buf + 8, &sender, 2);
	memcpy(buf + 10, &kind, 2);
	memcpy(buf + 12, &seq, 8);
	memcpy(buf + 20, &t, 8);
}

static void deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid, void *msg, size_t len)
{
	const unsigned char *m = msg;
	uint32_t number;
	uint16_t sender, kind;
	uint64_t seq, t_send, now;
	int i;
	(void)h;
	(void)g;
	(void)nodeid;
	(void)pid;
	if (!rs.active || len < HEADER_SIZE || memcmp(m, "CMKB", 4) != 0)
		return;
	memcpy(&number, m + 4, 4);
	if (number != rs.number)
		return;
	memcpy(&sender, m + 8, 2);
	memcpy(&kind, m + 10, 2);
	memcpy(&seq, m + 12, 8);
	memcpy(&t_send, m + 20, 8);
	if (kind == KIND_LAST) {
		for (i = 0; i < rs.n_lasts; i++)
			if (rs.lasts[i] == sender)
				return;
		if (rs.n_lasts < MAX_SENDERS)
			rs.lasts[rs.n_lasts++] = sender;
		return;
	}
	now = now_ns();
	if (rs.received == 0)
		rs.first_ns = now;
	rs.received++;
	rs.last_ns = now;
	for (i = 0; i < rs.n_seq; i++)
		if (rs.seq_sender[i] == sender)
			break;
	if (i == rs.n_seq && rs.n_seq < MAX_SENDERS) {
		rs.seq_sender[i] = sender;
		rs.seq_next[i] = seq;
		rs.n_seq++;
	}
	if (i < rs.n_seq) {
		if (rs.seq_next[i] != seq)
			rs.out_of_order++;
		rs.seq_next[i] = seq + 1;
	}
	if (sender == (uint16_t)my_nodeid && rs.n_lat < MAX_SAMPLES)
		rs.lat[rs.n_lat++] = now - t_send;
	if (rs.keep && rs.n_kept < MAX_SAMPLES) {
		kept[rs.n_kept].t = now;
		kept[rs.n_kept].seq = seq;
		kept[rs.n_kept++].sender = sender;
	}
}

static void confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m, size_t nm,
		    const struct cpg_address *l, size_t nl, const struct cpg_address *j, size_t nj)
{
	(void)h;
	(void)g;
	(void)l;
	(void)nl;
	(void)j;
	(void)nj;
	for (size_t i = 0; i < nm; i++)
		if (m[i].nodeid == my_nodeid && m[i].pid == my_pid)
			joined = 1;
}

static int fd;

static void dispatch(int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int r = poll(&p, 1, timeout_ms);
	if (r > 0) {
		cs_error_t e = cpg_dispatch(handle, CS_DISPATCH_ALL);
		if (e != CS_OK && e != CS_ERR_TRY_AGAIN) {
			lost = 1;
			fprintf(stderr, "cpgbench: cpg_dispatch: %d\n", e);
		}
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t quantile(uint64_t *v, long n, double q)
{
	long i = (long)(q * n);
	return v[i < n ? i : n - 1];
}

static void run_round(uint32_t number, long size, int sender, double duration, double rate, uint64_t start_at,
		      double timeout, int nsenders, int keep)
{
	static unsigned char buf[MAX_SIZE];
	struct iovec iov;
	uint64_t t0, end, next_at, interval, t_sent, deadline, t;
	long sent = 0, blocked = 0;
	double cpu0, cpu1;
	int complete;

	if (size < HEADER_SIZE)
		size = HEADER_SIZE;
	if (size > MAX_SIZE)
		size = MAX_SIZE;
	{
		uint64_t *lat = rs.lat;
		memset(&rs, 0, sizeof(rs));
		rs.lat = lat;
	}
	rs.number = number;
	rs.keep = keep;
	rs.active = 1;
	n_calls = 0;
	memset(buf, 0, (size_t)size);
	while ((t = now_ns()) < start_at && !lost)
		dispatch((int)((start_at - t) / 1000000) + 1 > 50 ? 50 : (int)((start_at - t) / 1000000));
	cpu0 = cpu_s();
	t0 = now_ns();
	iov.iov_base = buf;
	iov.iov_len = (size_t)size;
	if (sender && !lost) {
		end = t0 + (uint64_t)(duration * 1e9);
		interval = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
		next_at = t0;
		for (;;) {
			uint64_t now = now_ns(), c0;
			cs_error_t e;
			if (now >= end || lost)
				break;
			if (interval && now < next_at) {
				dispatch((int)((next_at - now) / 1000000));
				continue;
			}
			put_header(buf, number, KIND_DATA, (uint64_t)sent, now);
			c0 = now_ns();
			e = cpg_mcast_joined(handle, CPG_TYPE_AGREED, &iov, 1);
			if (e == CS_OK) {
				if (n_calls < MAX_SAMPLES)
					calls[n_calls++] = now_ns() - c0;
				sent++;
				next_at += interval;
				if (interval || sent % SEND_BATCH == 0)
					dispatch(0);
			} else if (e == CS_ERR_TRY_AGAIN) {
				blocked++;
				dispatch(1);
			} else {
				fprintf(stderr, "cpgbench: cpg_mcast_joined: %d\n", e);
				lost = 1;
			}
		}
		deadline = now_ns() + (uint64_t)(timeout * 1e9);
		for (;;) {
			cs_error_t e;
			put_header(buf, number, KIND_LAST, (uint64_t)sent, now_ns());
			e = cpg_mcast_joined(handle, CPG_TYPE_AGREED, &iov, 1);
			if (e == CS_OK || lost || now_ns() > deadline)
				break;
			if (e != CS_ERR_TRY_AGAIN) {
				lost = 1;
				break;
			}
			dispatch(1);
		}
	}
	t_sent = now_ns();
	deadline = t_sent + (uint64_t)(timeout * 1e9);
	while (rs.n_lasts < nsenders && now_ns() < deadline && !lost)
		dispatch(50);
	cpu1 = cpu_s();
	complete = rs.n_lasts >= nsenders;
	rs.active = 0;
	qsort(rs.lat, (size_t)rs.n_lat, sizeof(uint64_t), cmp_u64);
	qsort(calls, (size_t)n_calls, sizeof(uint64_t), cmp_u64);
	printf("{\"ok\": %s, \"complete\": %s, \"sent\": %ld, \"blocked\": %ld, \"t_start\": %llu, \"t_sent\": %llu, "
	       "\"received\": %ld, \"first_ns\": %llu, \"last_ns\": %llu, \"out_of_order\": %ld, \"lat_n\": %ld",
	       lost ? "false" : "true", complete ? "true" : "false", sent, blocked, (unsigned long long)t0,
	       (unsigned long long)t_sent, rs.received, (unsigned long long)rs.first_ns,
	       (unsigned long long)rs.last_ns, rs.out_of_order, rs.n_lat);
	if (rs.n_lat)
		printf(", \"lat_p50_ns\": %llu, \"lat_p90_ns\": %llu, \"lat_p99_ns\": %llu, \"lat_max_ns\": %llu",
		       (unsigned long long)quantile(rs.lat, rs.n_lat, 0.5),
		       (unsigned long long)quantile(rs.lat, rs.n_lat, 0.9),
		       (unsigned long long)quantile(rs.lat, rs.n_lat, 0.99),
		       (unsigned long long)rs.lat[rs.n_lat - 1]);
	if (n_calls)
		printf(", \"call_p50_ns\": %llu, \"call_p99_ns\": %llu", (unsigned long long)quantile(calls, n_calls, 0.5),
		       (unsigned long long)quantile(calls, n_calls, 0.99));
	if (keep) {
		printf(", \"deliveries\": [");
		for (long i = 0; i < rs.n_kept; i++)
			printf("%s[%llu, %u, %llu]", i ? ", " : "", (unsigned long long)kept[i].t, kept[i].sender,
			       (unsigned long long)kept[i].seq);
		printf("]");
	}
	printf(", \"client_cpu_s\": %.6f, \"client_wall_s\": %.6f%s}\n", cpu1 - cpu0, (now_ns() - t0) / 1e9,
	       lost ? ", \"error\": \"connection to the daemon lost\"" : "");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	cpg_model_v1_data_t model = {.model = CPG_MODEL_V1, .cpg_deliver_fn = deliver, .cpg_confchg_fn = confchg};
	struct cpg_name group;
	char line[512];
	cs_error_t e;
	uint64_t deadline;

	if (argc != 2 || strlen(argv[1]) >= CPG_MAX_NAME_LENGTH) {
		fprintf(stderr, "usage: cpgbench GROUP\n");
		return 2;
	}
	rs.lat = malloc(MAX_SAMPLES * sizeof(uint64_t));
	calls = malloc(MAX_SAMPLES * sizeof(uint64_t));
	kept = malloc(MAX_SAMPLES * sizeof(*kept));
	if (!rs.lat || !calls || !kept)
		return 3;
	setvbuf(stdout, NULL, _IOLBF, 0);
	e = cpg_model_initialize(&handle, CPG_MODEL_V1, (cpg_model_data_t *)&model, NULL);
	if (e != CS_OK) {
		printf("{\"ok\": false, \"error\": \"cpg_model_initialize: %d\"}\n", e);
		return 1;
	}
	cpg_local_get(handle, &my_nodeid);
	my_pid = (uint32_t)getpid();
	cpg_fd_get(handle, &fd);
	group.length = (uint32_t)strlen(argv[1]);
	memcpy(group.value, argv[1], group.length);
	deadline = now_ns() + 30000000000ull;
	while ((e = cpg_join(handle, &group)) == CS_ERR_TRY_AGAIN && now_ns() < deadline)
		usleep(10000);
	if (e != CS_OK) {
		printf("{\"ok\": false, \"error\": \"cpg_join: %d\"}\n", e);
		return 1;
	}
	while (!joined && !lost && now_ns() < deadline)
		dispatch(50);
	if (!joined) {
		printf("{\"ok\": false, \"error\": \"own join not seen\"}\n");
		return 1;
	}
	printf("{\"ok\": true, \"nodeid\": %u}\n", my_nodeid);
	for (;;) {
		struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
		if (poll(p, 2, 1000) < 0 && errno != EINTR)
			break;
		if (p[1].revents) {
			e = cpg_dispatch(handle, CS_DISPATCH_ALL);
			if (e != CS_OK && e != CS_ERR_TRY_AGAIN)
				lost = 1;
		}
		if (p[0].revents) {
			unsigned int number;
			long size;
			int sender, nsenders, keep;
			double duration, rate, timeout;
			unsigned long long start_at;
			if (!fgets(line, sizeof(line), stdin) || strncmp(line, "quit", 4) == 0)
				break;
			if (sscanf(line, "round %u %ld %d %lf %lf %llu %lf %d %d", &number, &size, &sender, &duration,
				   &rate, &start_at, &timeout, &nsenders, &keep) == 9)
				run_round(number, size, sender, duration, rate, start_at, timeout, nsenders, keep);
			else
				printf("{\"ok\": false, \"error\": \"bad command\"}\n");
		}
	}
	cpg_leave(handle, &group);
	cpg_finalize(handle);
	return 0;
}
