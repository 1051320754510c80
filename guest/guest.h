/* Shared declarations of the microvm test guest (guest.c, virtio.c). */
#ifndef MICROVM_GUEST_H
#define MICROVM_GUEST_H

#include <stdint.h>
#include <stddef.h>

/* ------------------------------------------------- guest.c: console etc. */

/* One console line, assembled in a buffer and written in one go. */
struct line {
    char buf[320];
    size_t len;
};

void ln_str(struct line *l, const char *s);
void ln_char(struct line *l, char c);
void ln_dec(struct line *l, uint64_t v);
void ln_hex(struct line *l, uint64_t v, int digits);
void ln_emit(struct line *l); /* appends '\n', writes, empties the line */

size_t str_len(const char *s);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
/* Does token [tok, tok+len) start with key?  Returns the value part or NULL. */
const char *match_key(const char *tok, size_t len, const char *key, size_t *vlen);

uint64_t now_ns(void);   /* monotonic guest time (kvmclock or PIT) */
void idle(uint64_t ns);  /* sleep in hlt for up to ns (at most 5 ms) */
extern uint64_t boot_params_addr; /* Linux zero page (e820 map, command line) */

/* ------------------------------------------- virtio.c: virtio-mmio devices */

int dev_arg(const char *tok, size_t len); /* one command-line token; 1 if used */
int dev_configured(void);  /* any microvm.<device> option given? */
void dev_start(int serve); /* probe devices, run one-shot actions, print */
void dev_poll(void);       /* serve vsock, net and balloon (main loop) */

#endif
