/* rwkv.cpp's side of bench/rwkv_cpp.sh: the measurements of bench_rwkv4_file.cpp, taken through
 * rwkv.cpp's public C API (rwkv.h) on a model file written by its own converter. Our code, not
 * rwkv.cpp's: bench/rwkv_cpp.sh compiles it against a librwkv built outside this repository.
 *
 *   rwkv_cpp_driver FILE [--threads N] [--kind prefill|loop|decode|check]
 *                        [--lengths 64,256,1024] [--chunks 16,32,64] [--decode-steps 64]
 *                        [--min-seconds 0.5] [--json OUT] [--logits OUT]
 *
 * --kind prefill: tokens/s of rwkv_eval_sequence_in_chunks (sequence mode, rwkv_eval_sequence
 *   over chunks of 16, 32 and 64 tokens: its graph has about 30 nodes per token and layer, and
 *   rwkv.cpp caps a graph at 80000 nodes, so whole prompts of 256 tokens and more do not fit)
 *   from the empty state, last logits only;
 * --kind loop: tokens/s of T rwkv_eval calls (serial mode; logits only for the last token, the
 *   documented way to feed a prompt);
 * --kind decode: ms/token of rwkv_eval with state in, state out and logits, after a 16-token
 *   sequence-mode prefill, each of --decode-steps steps timed alone;
 * --kind check: no timing; the logits after a 64-token prompt (sequence mode, chunks of 16) and
 *   after one more rwkv_eval step are written to --logits (2 x n_vocab float32).
 *
 * Each (way, T) is run once untimed (which also builds and caches rwkv.cpp's graph for that
 * sequence length), then timed until --min-seconds have passed (at most 5 runs); the best run
 * counts. Prompt token t is (7919 t + 13) mod n_vocab, as in bench_rwkv4_file.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rwkv.h"

#define MAX_LIST 16

typedef struct {
  const char* file;
  uint32_t threads;
  const char* kind;
  size_t lengths[MAX_LIST], n_lengths;
  size_t chunks[MAX_LIST], n_chunks;
  int decode_steps;
  double min_seconds;
  const char* json;
  const char* logits;
} options;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void usage(const char* message) {
  fprintf(
      stderr,
      "error: %s\nusage: rwkv_cpp_driver FILE [--threads N] [--kind prefill|loop|decode|check]\n"
      "         [--lengths 64,256,1024] [--chunks 16,32,64] [--decode-steps 64]\n"
      "         [--min-seconds 0.5] [--json OUT] [--logits OUT]\n",
      message);
  exit(2);
}

static size_t parse_list(const char* text, size_t* list) {
  size_t n = 0;
  char* copy = strdup(text);
  for (char* item = strtok(copy, ","); item != NULL; item = strtok(NULL, ",")) {
    const long value = strtol(item, NULL, 10);
    if (value < 1 || n == MAX_LIST) usage("list entries must be >= 1 (at most 16 of them)");
    list[n++] = (size_t)value;
  }
  free(copy);
  if (n == 0) usage("empty list");
  return n;
}

static options parse(int argc, char** argv) {
  options o = {NULL, 1, "prefill", {64, 256, 1024}, 3, {16, 32, 64}, 3, 64, 0.5, NULL, NULL};
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg[0] == '-' && !has_value) usage("missing value after an option");
    if (strcmp(arg, "--threads") == 0) {
      const long threads = strtol(argv[++i], NULL, 10);
      o.threads = threads < 1 ? 1 : (uint32_t)threads;
    } else if (strcmp(arg, "--kind") == 0) {
      o.kind = argv[++i];
      if (strcmp(o.kind, "prefill") != 0 && strcmp(o.kind, "loop") != 0 &&
          strcmp(o.kind, "decode") != 0 && strcmp(o.kind, "check") != 0)
        usage("unknown kind");
    } else if (strcmp(arg, "--lengths") == 0) {
      o.n_lengths = parse_list(argv[++i], o.lengths);
    } else if (strcmp(arg, "--chunks") == 0) {
      o.n_chunks = parse_list(argv[++i], o.chunks);
    } else if (strcmp(arg, "--decode-steps") == 0) {
      const long steps = strtol(argv[++i], NULL, 10);
      o.decode_steps = steps < 1 ? 1 : (int)steps;
    } else if (strcmp(arg, "--min-seconds") == 0) {
      o.min_seconds = strtod(argv[++i], NULL);
    } else if (strcmp(arg, "--json") == 0) {
      o.json = argv[++i];
    } else if (strcmp(arg, "--logits") == 0) {
      o.logits = argv[++i];
    } else if (arg[0] == '-') {
      usage("unknown option");
    } else if (o.file == NULL) {
      o.file = arg;
    } else {
      usage("more than one file given");
    }
  }
  if (o.file == NULL) usage("no model file given");
  return o;
}

static void check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "rwkv_cpp_driver: %s failed\n", what);
    exit(1);
  }
}

/* Everything one measurement needs. */
typedef struct {
  struct rwkv_context* ctx;
  uint32_t* tokens; /* the longest prompt */
  float* state;
  float* logits;
} model;

static void prefill_sequence(model* m, size_t T, size_t chunk) {
  check(rwkv_eval_sequence_in_chunks(m->ctx, m->tokens, T, chunk, NULL, m->state, m->logits),
        "rwkv_eval_sequence_in_chunks");
}

static void prefill_serial(model* m, size_t T) {
  rwkv_init_state(m->ctx, m->state);
  for (size_t t = 0; t < T; ++t) {
    check(rwkv_eval(m->ctx, m->tokens[t], m->state, m->state, t + 1 == T ? m->logits : NULL),
          "rwkv_eval");
  }
}

/* Shortest time of one (way, T) after an untimed run: timed until min_seconds have passed, at
 * least once and at most 5 times. chunk 0: the serial loop. */
static double best_seconds(model* m, size_t T, size_t chunk, double min_seconds) {
  double best = 1e300, total = 0;
  for (int run = -1; run < 5 && (run < 1 || total < min_seconds); ++run) {
    const double start = now();
    if (chunk == 0) {
      prefill_serial(m, T);
    } else {
      prefill_sequence(m, T, chunk);
    }
    const double seconds = now() - start;
    if (run >= 0) {
      best = seconds < best ? seconds : best;
      total += seconds;
    }
  }
  return best;
}

static int compare_doubles(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  model m;
  const double load_start = now();
  m.ctx = rwkv_init_from_file(o.file, o.threads, 0);
  check(m.ctx != NULL, "rwkv_init_from_file");
  const double load_seconds = now() - load_start;
  const size_t vocab = rwkv_get_n_vocab(m.ctx);
  size_t max_length = 64;
  for (size_t i = 0; i < o.n_lengths; ++i)
    max_length = o.lengths[i] > max_length ? o.lengths[i] : max_length;
  m.tokens = malloc(max_length * sizeof(uint32_t));
  m.state = malloc(rwkv_get_state_len(m.ctx) * sizeof(float));
  m.logits = malloc(rwkv_get_logits_len(m.ctx) * sizeof(float));
  check(m.tokens != NULL && m.state != NULL && m.logits != NULL, "malloc");
  for (size_t t = 0; t < max_length; ++t) m.tokens[t] = (uint32_t)((t * 7919 + 13) % vocab);
  fprintf(stderr, "rwkv.cpp: %s, L %zu C %zu V %zu, %u thread(s), %s\n", o.file,
          rwkv_get_n_layer(m.ctx), rwkv_get_n_embed(m.ctx), vocab, o.threads, o.kind);

  FILE* out = o.json != NULL ? fopen(o.json, "w") : stdout;
  check(out != NULL, "opening the JSON output");
  fprintf(out, "{\n  \"side\": \"rwkv.cpp\",\n  \"file\": \"%s\",\n  \"kind\": \"%s\",\n", o.file,
          o.kind);
  fprintf(out, "  \"threads\": %u,\n  \"load_seconds\": %.6f,\n", o.threads, load_seconds);
  fprintf(out, "  \"model\": {\"layers\": %zu, \"embed\": %zu, \"vocab\": %zu},\n",
          rwkv_get_n_layer(m.ctx), rwkv_get_n_embed(m.ctx), vocab);
  fprintf(out, "  \"system_info\": \"%s\"", rwkv_get_system_info_string());

  if (strcmp(o.kind, "prefill") == 0 || strcmp(o.kind, "loop") == 0) {
    const bool serial = strcmp(o.kind, "loop") == 0;
    fprintf(out, ",\n  \"prefill\": [");
    bool first = true;
    for (size_t c = 0; c < (serial ? 1 : o.n_chunks); ++c) {
      const size_t chunk = serial ? 0 : o.chunks[c];
      char way[32];
      if (serial) {
        snprintf(way, sizeof way, "serial_loop");
      } else {
        snprintf(way, sizeof way, "sequence%zu", chunk);
      }
      for (size_t i = 0; i < o.n_lengths; ++i) {
        const size_t T = o.lengths[i];
        const double seconds = best_seconds(&m, T, chunk, o.min_seconds);
        fprintf(out,
                "%s\n    {\"way\": \"%s\", \"T\": %zu, \"seconds\": %.6f, "
                "\"tokens_per_second\": %.3f}",
                first ? "" : ",", way, T, seconds, (double)T / seconds);
        first = false;
        fprintf(stderr, "  %-12s T %5zu  %9.1f tokens/s\n", way, T, (double)T / seconds);
      }
    }
    fprintf(out, "\n  ]");
  } else if (strcmp(o.kind, "decode") == 0) {
    check(rwkv_eval_sequence(m.ctx, m.tokens, 16, NULL, m.state, m.logits), "rwkv_eval_sequence");
    double* ms = malloc((size_t)o.decode_steps * sizeof(double));
    check(ms != NULL, "malloc");
    uint32_t token = 1;
    for (int step = -4; step < o.decode_steps; ++step) { /* 4 untimed steps first */
      const double start = now();
      check(rwkv_eval(m.ctx, token, m.state, m.state, m.logits), "rwkv_eval");
      if (step >= 0) ms[step] = 1e3 * (now() - start);
      token = (uint32_t)((token * 31 + 7) % vocab);
    }
    const size_t n = (size_t)o.decode_steps;
    double mean = 0;
    for (size_t i = 0; i < n; ++i) mean += ms[i] / (double)n;
    qsort(ms, n, sizeof(double), compare_doubles);
    const double median = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    fprintf(out,
            ",\n  \"decode\": {\"steps\": %zu, \"ms_per_token\": {\"median\": %.6f, \"min\": "
            "%.6f, \"mean\": %.6f, \"max\": %.6f}}",
            n, median, ms[0], mean, ms[n - 1]);
    fprintf(stderr, "  decode %.2f ms/token (median of %zu)\n", median, n);
    free(ms);
  } else { /* check */
    if (o.logits == NULL) usage("--kind check needs --logits OUT");
    FILE* dump = fopen(o.logits, "wb");
    check(dump != NULL, "opening the logits output");
    prefill_sequence(&m, 64, 16);
    check(fwrite(m.logits, sizeof(float), vocab, dump) == vocab, "writing logits");
    check(rwkv_eval(m.ctx, 1, m.state, m.state, m.logits), "rwkv_eval");
    check(fwrite(m.logits, sizeof(float), vocab, dump) == vocab, "writing logits");
    check(fclose(dump) == 0, "closing the logits output");
  }
  fprintf(out, "\n}\n");
  if (out != stdout) check(fclose(out) == 0, "closing the JSON output");
  rwkv_free(m.ctx);
  free(m.tokens);
  free(m.state);
  free(m.logits);
  return 0;
}
