/* progress.c - progress bar and progress lines (progress.h). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "progress.h"

#define BAR_MIN 10

double progress_rate(const struct progress_sample *s)
{
	return s->elapsed > 0 ? (double)s->done_run / s->elapsed : 0;
}

double progress_eta(const struct progress_sample *s)
{
	double rate = progress_rate(s);

	if (s->total == 0 || rate <= 0)
		return -1;
	return s->done >= s->total ? 0 : (double)(s->total - s->done) / rate;
}

void progress_count(char *buf, size_t cap, uint64_t n)
{
	char digits[24];
	size_t len, i, o = 0;

	snprintf(digits, sizeof(digits), "%" PRIu64, n);
	len = strlen(digits);
	for (i = 0; i < len && o + 1 < cap; i++) {
		if (i > 0 && (len - i) % 3 == 0) {
			buf[o++] = ',';
			if (o + 1 >= cap)
				break;
		}
		buf[o++] = digits[i];
	}
	if (cap > 0)
		buf[o] = '\0';
}

void progress_duration(char *buf, size_t cap, double seconds)
{
	uint64_t t = seconds > 0 ? (uint64_t)(seconds + 0.5) : 0;

	if (t >= 3600)
		snprintf(buf, cap, "%" PRIu64 ":%02u:%02u", t / 3600, (unsigned)(t / 60 % 60),
			 (unsigned)(t % 60));
	else
		snprintf(buf, cap, "%u:%02u", (unsigned)(t / 60), (unsigned)(t % 60));
}

size_t progress_bar(char *buf, size_t cap, const struct progress_sample *s, unsigned width)
{
	char done[32], total[32], rate[32], eta[24], failed[48] = "", text[192];
	double r = progress_rate(s), left = progress_eta(s), frac;
	size_t bar, fill, i, o = 0;
	int n;

	if (cap == 0)
		return 0;
	if (width < 40)
		width = 40;
	progress_count(done, sizeof(done), s->done);
	progress_count(rate, sizeof(rate), (uint64_t)(r + 0.5));
	if (s->failed > 0) {
		char f[32];

		progress_count(f, sizeof(f), s->failed);
		snprintf(failed, sizeof(failed), "  %s failed", f);
	}
	if (s->total == 0) {
		progress_duration(eta, sizeof(eta), s->elapsed);
		n = snprintf(buf, cap, "%s done  %s/s%s  %s", done, rate, failed, eta);
		return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
	}
	progress_count(total, sizeof(total), s->total);
	if (left < 0)
		snprintf(eta, sizeof(eta), "--:--");
	else
		progress_duration(eta, sizeof(eta), left);
	frac = s->done >= s->total ? 1.0 : (double)s->done / (double)s->total;
	n = snprintf(text, sizeof(text), " %5.1f%%  %s/%s  %s/s  ETA %s%s", frac * 100, done,
		     total, rate, eta, failed);
	if (n < 0)
		n = 0;
	bar = width > (size_t)n + 2 + BAR_MIN ? width - (size_t)n - 2 : BAR_MIN;
	fill = (size_t)(frac * (double)bar);
	buf[o++] = '[';
	for (i = 0; i < bar && o + 1 < cap; i++)
		buf[o++] = i < fill ? '=' : i == fill ? '>' : ' ';
	if (o + 1 < cap)
		buf[o++] = ']';
	buf[o] = '\0';
	snprintf(buf + o, cap - o, "%s", text);
	return strlen(buf);
}

size_t progress_json(char *buf, size_t cap, const struct progress_sample *s)
{
	char total[24] = "null", eta[32] = "null";
	double left = progress_eta(s);
	int n;

	if (s->total > 0)
		snprintf(total, sizeof(total), "%" PRIu64, s->total);
	if (left >= 0)
		snprintf(eta, sizeof(eta), "%.1f", left);
	n = snprintf(buf, cap,
		     "{\"progress\":{\"done\":%" PRIu64 ",\"total\":%s,\"failed\":%" PRIu64
		     ",\"rate_per_second\":%.1f,\"eta_seconds\":%s,\"elapsed_seconds\":%.1f}}\n",
		     s->done, total, s->failed, progress_rate(s), eta, s->elapsed);
	if (n < 0 || cap == 0)
		return 0;
	return (size_t)n < cap ? (size_t)n : cap - 1;
}
