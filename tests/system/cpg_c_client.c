/*
 * A libcpg client in C, for the system tests: the load client of tests/system/cpghelpers.py in
 * its C flavour, built against Debian's libcpg-dev.
 *
 *     cpg_c_client GROUP ME COUNT MEMBERS TIMEOUT_S OUT.json
 *
 * Joins GROUP, waits until MEMBERS processes are in it (the start barrier, seen in its own
 * confchgs), multicasts COUNT messages "<ME>:<i>" (agreed order; CS_ERR_TRY_AGAIN is flow control:
 * dispatch and retry), and dispatches until it has delivered COUNT messages of every sender that
 * was in the group at the barrier. Writes what it saw as cpghelpers' JSON:
 *   {"events": ["D <nodeid> <payload>", "C members=n:p,... left=... joined=...", ...],
 *    "first_send": t, "last_send": t, "done": t, "delivered": n, "error": "", "marks": []}
 * with times from CLOCK_MONOTONIC (Python's time.monotonic()).
 */
#include <corosync/cpg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 400000
#define MAX_SENDERS 32

static char *events[MAX_EVENTS];
static size_t n_events;
static int members_needed, started, done_flag, count;
static unsigned int senders[MAX_SENDERS], got[MAX_SENDERS];
static size_t n_senders;
static long delivered;
static char error_text[256];

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record(const char *text)
{
	if (n_events < MAX_EVENTS)
		events[n_events++] = strdup(text);
}

static int sender_index(unsigned int nodeid)
{
	for (size_t i = 0; i < n_senders; i++)
		if (senders[i] == nodeid)
			return (int)i;
	return -1;
}

static void check_done(void)
{
	if (!started)
		return;
	for (size_t i = 0; i < n_senders; i++)
		if (got[i] < (unsigned int)count)
			return;
	done_flag = 1;
}

static void deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid, void *msg, size_t len)
{
	char text[512], payload[401];
	unsigned int sender, counter;
	(void)h;
	(void)g;
	(void)pid;
	if (done_flag)
		return;
	len = len < 400 ? len : 400;
	memcpy(payload, msg, len);
	payload[len] = 0; /* a message is not a C string */
	snprintf(text, sizeof(text), "D %u %s", nodeid, payload);
	record(text);
	delivered++;
	if (sscanf(payload, "%u:%u", &sender, &counter) == 2) {
		int i = sender_index(sender);
		if (i >= 0) {
			if (counter != got[i] && !error_text[0])
				snprintf(error_text, sizeof(error_text), "from %u: got %u, expected %u", sender, counter, got[i]);
			got[i] = counter + 1;
		}
	}
	check_done();
}

static int by_node_pid(const void *a, const void *b)
{
	const struct cpg_address *x = a, *y = b;
	if (x->nodeid != y->nodeid)
		return x->nodeid < y->nodeid ? -1 : 1;
	return x->pid < y->pid ? -1 : (x->pid > y->pid);
}

static void append_list(char *out, size_t room, const char *label, struct cpg_address *list, size_t n, int reasons)
{
	struct cpg_address sorted[CPG_MEMBERS_MAX];
	memcpy(sorted, list, n * sizeof(*list));
	qsort(sorted, n, sizeof(*sorted), by_node_pid);
	strncat(out, label, room - strlen(out) - 1);
	for (size_t i = 0; i < n; i++) {
		char item[64];
		if (reasons)
			snprintf(item, sizeof(item), "%s%u:%u:%u", i ? "," : "", sorted[i].nodeid, sorted[i].pid, sorted[i].reason);
		else
			snprintf(item, sizeof(item), "%s%u:%u", i ? "," : "", sorted[i].nodeid, sorted[i].pid);
		strncat(out, item, room - strlen(out) - 1);
	}
}

static void confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m, size_t nm,
		    const struct cpg_address *l, size_t nl, const struct cpg_address *j, size_t nj)
{
	char text[8192] = "";
	(void)h;
	(void)g;
	if (done_flag)
		return;
	append_list(text, sizeof(text), "C members=", (struct cpg_address *)m, nm, 0);
	append_list(text, sizeof(text), " left=", (struct cpg_address *)l, nl, 1);
	append_list(text, sizeof(text), " joined=", (struct cpg_address *)j, nj, 1);
	record(text);
	if (!started && nm >= (size_t)members_needed) {
		started = 1;
		for (size_t i = 0; i < nm && n_senders < MAX_SENDERS; i++)
			if (sender_index(m[i].nodeid) < 0)
				senders[n_senders++] = m[i].nodeid;
	}
	check_done();
}

static void write_json(const char *path, double first, double last, double done_at)
{
	FILE *f;
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		exit(3);
	fprintf(f, "{\"events\": [");
	for (size_t i = 0; i < n_events; i++) {
		fputc('"', f);
		for (const char *p = events[i]; *p; p++)
			if (*p == '"' || *p == '\\')
				fprintf(f, "\\%c", *p);
			else if ((unsigned char)*p >= 32)
				fputc(*p, f);
		fprintf(f, "\"%s", i + 1 < n_events ? ", " : "");
	}
	fprintf(f, "], \"first_send\": %.6f, \"last_send\": %.6f, \"done\": %.6f, \"delivered\": %ld, "
		   "\"error\": \"%s\", \"marks\": []}\n", first, last, done_at, delivered, error_text);
	fclose(f);
	rename(tmp, path);
}

int main(int argc, char **argv)
{
	cpg_handle_t handle;
	cpg_callbacks_t callbacks = {.cpg_deliver_fn = deliver, .cpg_confchg_fn = confchg};
	struct cpg_name group;
	struct pollfd pfd;
	int fd, sent = 0;
	double deadline, first = 0, last = 0;

	if (argc != 7) {
		fprintf(stderr, "usage: %s GROUP ME COUNT MEMBERS TIMEOUT_S OUT\n", argv[0]);
		return 2;
	}
	count = atoi(argv[3]);
	members_needed = atoi(argv[4]);
	deadline = now() + atof(argv[5]);
	if (cpg_initialize(&handle, &callbacks) != CS_OK)
		return 1;
	group.length = strlen(argv[1]);
	memcpy(group.value, argv[1], group.length);
	while (cpg_join(handle, &group) == CS_ERR_TRY_AGAIN)
		usleep(10000);
	cpg_fd_get(handle, &fd);
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (!done_flag && now() < deadline) {
		if (started && sent < count) {
			char text[64];
			struct iovec iov = {.iov_base = text};
			iov.iov_len = snprintf(text, sizeof(text), "%s:%d", argv[2], sent);
			if (!first)
				first = now();
			cs_error_t rc = cpg_mcast_joined(handle, CPG_TYPE_AGREED, &iov, 1);
			if (rc == CS_OK) {
				sent++;
				last = now();
			} else if (rc != CS_ERR_TRY_AGAIN) {
				snprintf(error_text, sizeof(error_text), "cpg_mcast_joined: %d", rc);
				break;
			}
		}
		if (poll(&pfd, 1, started && sent < count ? 0 : 200) > 0)
			if (cpg_dispatch(handle, CS_DISPATCH_ALL) != CS_OK) {
				snprintf(error_text, sizeof(error_text), "cpg_dispatch failed");
				break;
			}
	}
	if (!done_flag && !error_text[0])
		snprintf(error_text, sizeof(error_text), "timed out: %ld delivered", delivered);
	write_json(argv[6], first, last, now());
	cpg_leave(handle, &group);
	cpg_finalize(handle);
	return error_text[0] ? 1 : 0;
}
