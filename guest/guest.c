/*
 * microvm test guest: a tiny freestanding "kernel" for Firecracker.
 *
 * By default it talks to the host only through the legacy devices Firecracker
 * always provides: the 16550 UART at 0x3f8 (console), the i8042 at 0x60/0x64
 * (Ctrl-Alt-Del in, reset out), the i8254 PIT and the local APIC.  The
 * virtio-mmio devices (virtio.c) are touched only when a microvm.<device>
 * option asks for them.  See README.md for the command line and the exact
 * output lines.
 */
#include "guest.h"

/* ---------------------------------------------------------------- ports */

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

/* --------------------------------------------------------------- serial */

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_DATA_READY 0x01

/*
 * Firecracker's UART accepts a byte on every write to THR (its transmitter
 * is always empty), so we do not poll LSR.THRE: that would double the
 * number of VM exits per byte (each exit costs ~12 us here).
 */
static void con_write(const char *s, size_t n)
{
    while (n--)
        outb(COM1, (uint8_t)*s++);
}

size_t str_len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* A line (struct line, guest.h) is assembled in a buffer and written in one go. */
void ln_str(struct line *l, const char *s)
{
    while (*s && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = *s++;
}

void ln_dec(struct line *l, uint64_t v)
{
    char tmp[21];
    int i = 20;
    tmp[i] = 0;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ln_str(l, tmp + i);
}

void ln_char(struct line *l, char c)
{
    if (l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = c;
}

/* v as exactly `digits` lowercase hex digits (the low ones). */
void ln_hex(struct line *l, uint64_t v, int digits)
{
    while (digits-- > 0)
        ln_char(l, "0123456789abcdef"[(v >> (4 * digits)) & 0xf]);
}

void ln_emit(struct line *l)
{
    if (l->len < sizeof(l->buf))
        l->buf[l->len++] = '\n';
    con_write(l->buf, l->len);
    l->len = 0;
}

static void say(const char *s)
{
    con_write(s, str_len(s));
}

/* ---------------------------------------------------------- command line */

enum mode { MODE_NORMAL, MODE_TRIPLE_FAULT, MODE_HANG, MODE_EXIT, MODE_CRASH };
static const char *const mode_names[] = { "normal", "triple-fault", "hang", "exit", "crash" };

enum clock_kind { CLOCK_AUTO, CLOCK_KVMCLOCK, CLOCK_PIT };

#define DEFAULT_HEARTBEAT_MS 250
#define MAX_HEARTBEAT_MS 86400000u

static struct {
    enum mode mode;
    uint64_t heartbeat_ms;
    enum clock_kind clock;
} cfg = { MODE_NORMAL, DEFAULT_HEARTBEAT_MS, CLOCK_AUTO };

/* Does token [tok, tok+len) start with key?  Returns the value part or NULL. */
const char *match_key(const char *tok, size_t len, const char *key, size_t *vlen)
{
    size_t k = str_len(key);
    if (len < k)
        return NULL;
    for (size_t i = 0; i < k; i++)
        if (tok[i] != key[i])
            return NULL;
    *vlen = len - k;
    return tok + k;
}

static int val_is(const char *v, size_t n, const char *word)
{
    return n == str_len(word) && match_key(v, n, word, &n) != NULL;
}

static void parse_cmdline(const char *p)
{
    if (!p)
        return;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        const char *tok = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n')
            p++;
        size_t len = (size_t)(p - tok), n;
        const char *v;

        if ((v = match_key(tok, len, "microvm.mode=", &n))) {
            for (size_t m = 0; m < sizeof(mode_names) / sizeof(mode_names[0]); m++)
                if (val_is(v, n, mode_names[m]))
                    cfg.mode = (enum mode)m;
        } else if ((v = match_key(tok, len, "microvm.heartbeat_ms=", &n))) {
            uint64_t ms = 0;
            size_t i;
            for (i = 0; i < n && v[i] >= '0' && v[i] <= '9'; i++)
                if (ms <= MAX_HEARTBEAT_MS) /* saturate, no overflow */
                    ms = ms * 10 + (uint64_t)(v[i] - '0');
            if (n > 0 && i == n) /* ignore malformed values */
                cfg.heartbeat_ms = ms > MAX_HEARTBEAT_MS ? MAX_HEARTBEAT_MS : ms;
        } else if ((v = match_key(tok, len, "microvm.clock=", &n))) {
            if (val_is(v, n, "kvmclock"))
                cfg.clock = CLOCK_KVMCLOCK;
            else if (val_is(v, n, "pit"))
                cfg.clock = CLOCK_PIT;
        } else {
            /* microvm.blk=, ... and virtio_mmio.device= are the device code's
             * (virtio.c); anything else (console=, ...) is ignored. */
            dev_arg(tok, len);
        }
    }
}

/* ---------------------------------------------------------------- clocks */

/*
 * kvmclock: the hypervisor keeps a pvclock structure up to date in guest
 * memory; time = system_time + scaled(rdtsc - tsc_timestamp).  It follows
 * host time even when the vCPU thread is descheduled.
 */
struct pvclock_vcpu_time_info {
    uint32_t version;
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t tsc_to_system_mul;
    int8_t tsc_shift;
    uint8_t flags;
    uint8_t pad[2];
} __attribute__((packed));

static volatile struct pvclock_vcpu_time_info pvclock __attribute__((aligned(64)));

#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_FEATURE_CLOCKSOURCE2 (1u << 3)

static uint64_t kvmclock_ns(void)
{
    uint32_t ver;
    uint64_t ns;
    do {
        ver = pvclock.version;
        __asm__ volatile("" ::: "memory");
        uint64_t delta = rdtsc() - pvclock.tsc_timestamp;
        int8_t shift = pvclock.tsc_shift;
        if (shift >= 0)
            delta <<= shift;
        else
            delta >>= -shift;
        ns = pvclock.system_time +
             (uint64_t)(((unsigned __int128)delta * pvclock.tsc_to_system_mul) >> 32);
        __asm__ volatile("" ::: "memory");
    } while ((ver & 1) || ver != pvclock.version);
    return ns;
}

static int kvmclock_init(void)
{
    uint32_t a, b, c, d;
    cpuid(0x40000000, &a, &b, &c, &d);
    /* "KVMKVMKVM\0\0\0" */
    if (b != 0x4b4d564b || c != 0x564b4d56 || d != 0x0000004d || a < 0x40000001)
        return 0;
    cpuid(0x40000001, &a, &b, &c, &d);
    if (!(a & KVM_FEATURE_CLOCKSOURCE2))
        return 0;
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvclock | 1);
    /* The hypervisor fills the structure at once (version even, != 0). */
    return pvclock.version != 0 && pvclock.tsc_to_system_mul != 0;
}

/*
 * PIT fallback: channel 0 in mode 2 with reload 0 (65536 ticks at
 * 1.193182 MHz = 54.9 ms per period); elapsed ticks are accumulated from
 * latched reads.  Must be sampled at least every ~27 ms (the main loop
 * does so every 5 ms).
 */
#define PIT_HZ 1193182u
static uint16_t pit_prev;
static uint64_t pit_ticks;

static uint16_t pit_read(void)
{
    outb(0x43, 0x00); /* latch channel 0 */
    uint8_t lo = inb(0x40);
    uint8_t hi = inb(0x40);
    return (uint16_t)(lo | (hi << 8));
}

static void pit_init(void)
{
    outb(0x43, 0x34); /* channel 0, lobyte/hibyte, mode 2, binary */
    outb(0x40, 0x00);
    outb(0x40, 0x00);
    pit_prev = pit_read();
    pit_ticks = 0;
}

static uint64_t pit_ns(void)
{
    uint16_t cur = pit_read();
    pit_ticks += (uint16_t)(pit_prev - cur);
    pit_prev = cur;
    return pit_ticks / PIT_HZ * 1000000000ull + pit_ticks % PIT_HZ * 1000000000ull / PIT_HZ;
}

static enum clock_kind clock_in_use;

static void clock_init(void)
{
    if (cfg.clock != CLOCK_PIT && kvmclock_init()) {
        clock_in_use = CLOCK_KVMCLOCK;
        return;
    }
    pit_init();
    clock_in_use = CLOCK_PIT;
}

uint64_t now_ns(void)
{
    return clock_in_use == CLOCK_KVMCLOCK ? kvmclock_ns() : pit_ns();
}

/* ------------------------------------------------- local APIC idle tick */

/*
 * Instead of spinning (which would burn a host CPU), the main loop sleeps
 * in `hlt` and is woken by a one-shot x2APIC timer after at most TICK_NS,
 * or earlier when the next heartbeat is due.  KVM's APIC timer runs at
 * 1 GHz (1 ns per count with divide-by-1); the exact rate only affects how
 * often we wake up, never the heartbeat times: those come from the clock.
 * Serial input and the i8042 are polled on every wake-up (no interrupts).
 */
#define TICK_NS 5000000u
#define DEV_TICK_NS 1000000u /* poll period while virtio devices are in use */
#define MIN_SLEEP_NS 20000u
#define TIMER_VECTOR 0x20
#define SPURIOUS_VECTOR 0xff

#define MSR_APIC_BASE 0x1b
#define APIC_BASE_ENABLE (1u << 11)
#define APIC_BASE_X2APIC (1u << 10)
#define MSR_X2APIC_SVR 0x80f
#define MSR_X2APIC_LVT_TIMER 0x832
#define MSR_X2APIC_TIMER_INIT 0x838
#define MSR_X2APIC_TIMER_DIV 0x83e
#define CPUID1_ECX_X2APIC (1u << 21)

struct idt_gate {
    uint16_t off0;
    uint16_t sel;
    uint16_t attr;
    uint16_t off1;
    uint32_t off2;
    uint32_t zero;
} __attribute__((packed));

/* Only the two vectors we use are present: any CPU exception triple-faults. */
static struct idt_gate idt[256] __attribute__((aligned(16)));

volatile uint64_t apic_ticks; /* incremented by isr_apic_timer */
extern void isr_apic_timer(void);
extern void isr_spurious(void);

static void idt_set(int vec, void (*handler)(void), uint16_t cs)
{
    uint64_t h = (uint64_t)(uintptr_t)handler;
    idt[vec].off0 = (uint16_t)h;
    idt[vec].sel = cs;
    idt[vec].attr = 0x8e00; /* present, DPL 0, 64-bit interrupt gate */
    idt[vec].off1 = (uint16_t)(h >> 16);
    idt[vec].off2 = (uint32_t)(h >> 32);
    idt[vec].zero = 0;
}

static void load_idt(const void *base, uint16_t limit)
{
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) idtr = { limit, (uint64_t)(uintptr_t)base };
    __asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
}

static int use_hlt;

static void idle_init(void)
{
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    if (!(c & CPUID1_ECX_X2APIC))
        return; /* busy polling then */

    /*
     * Mask both legacy PICs: their IRQs (PIT IRQ 0, the i8042's IRQ 1 on
     * SendCtrlAltDel) reach the CPU through LINT0 (ExtINT) with vectors we
     * have no gates for, which would triple-fault the guest.
     */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt_set(TIMER_VECTOR, isr_apic_timer, cs);
    idt_set(SPURIOUS_VECTOR, isr_spurious, cs);
    load_idt(idt, sizeof(idt) - 1);

    /* disabled -> x2APIC directly is invalid (#GP): go through xAPIC. */
    uint64_t base = rdmsr(MSR_APIC_BASE);
    if (!(base & APIC_BASE_ENABLE))
        wrmsr(MSR_APIC_BASE, base |= APIC_BASE_ENABLE);
    wrmsr(MSR_APIC_BASE, base | APIC_BASE_X2APIC);
    wrmsr(MSR_X2APIC_SVR, 0x100 | SPURIOUS_VECTOR); /* APIC software enable */
    wrmsr(MSR_X2APIC_TIMER_DIV, 0xb);               /* divide by 1 */
    wrmsr(MSR_X2APIC_LVT_TIMER, TIMER_VECTOR); /* one-shot */
    use_hlt = 1;
}

/* Sleep until the APIC timer fires after ns nanoseconds (or busy-return). */
void idle(uint64_t ns)
{
    if (!use_hlt)
        return;
    if (ns > TICK_NS)
        ns = TICK_NS;
    if (ns < MIN_SLEEP_NS)
        ns = MIN_SLEEP_NS;
    wrmsr(MSR_X2APIC_TIMER_INIT, ns); /* (re)arms the one-shot timer */
    /* `sti` takes effect after the next instruction: no lost wake-up. */
    __asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* -------------------------------------------------------- stop the VM */

static __attribute__((noreturn)) void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* Pulse the CPU reset line through the i8042: Firecracker stops the VM. */
static __attribute__((noreturn)) void reset(void)
{
    outb(0x64, 0xfe);
    halt_forever();
}

static __attribute__((noreturn)) void goodbye(void)
{
    say("microvm-guest: goodbye\n");
    reset();
}

/* Empty IDT + invalid opcode: #UD -> #GP -> #DF -> triple fault. */
static __attribute__((noreturn)) void triple_fault(void)
{
    load_idt(NULL, 0);
    __asm__ volatile("ud2");
    halt_forever();
}

/*
 * An x87 load from an address with no memory behind it: KVM must emulate
 * the MMIO access but its instruction emulator has no x87 loads, so
 * KVM_RUN fails with KVM_EXIT_INTERNAL_ERROR and Firecracker exits 1.
 * The address is in the 32-bit MMIO gap (0xd0000000-0xffffffff) away
 * from the virtio devices; we map it with one 2 MiB page.
 */
#define CRASH_ADDR 0xdfe00000ull
static uint64_t crash_pd[512] __attribute__((aligned(4096)));

static __attribute__((noreturn)) void crash(void)
{
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & 0x000ffffffffff000ull);
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & 0x000ffffffffff000ull);
    crash_pd[(CRASH_ADDR >> 21) & 511] = CRASH_ADDR | 0x9b; /* P RW PWT PCD PS */
    pdpt[(CRASH_ADDR >> 30) & 511] = (uint64_t)(uintptr_t)crash_pd | 0x3;
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
    __asm__ volatile("fildl (%0)" : : "r"(CRASH_ADDR) : "memory");
    /* Not reached under KVM; elsewhere fall back to a triple fault. */
    triple_fault();
}

/* --------------------------------------------------------------- inputs */

#define ECHO_MAX 200

static struct {
    char buf[ECHO_MAX];
    size_t len;
    int last_cr;
} rx;

static void echo_line(void)
{
    struct line l = { .len = 0 };
    ln_str(&l, "microvm-guest: echo ");
    for (size_t i = 0; i < rx.len; i++)
        l.buf[l.len++] = rx.buf[i];
    ln_emit(&l);
    rx.len = 0;
}

static void rx_byte(uint8_t c)
{
    int after_cr = rx.last_cr;
    rx.last_cr = (c == '\r');
    if (c == '\n' && after_cr)
        return; /* second half of \r\n */
    if (c == '\r' || c == '\n') {
        echo_line();
        return;
    }
    if (rx.len < ECHO_MAX) /* longer lines are truncated */
        rx.buf[rx.len++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
}

static void poll_serial(void)
{
    while (inb(COM1_LSR) & LSR_DATA_READY)
        rx_byte(inb(COM1));
}

/* Firecracker's SendCtrlAltDel queues set-2 scancodes: Ctrl, Alt, E0 Del. */
static const uint8_t cad_seq[] = { 0x14, 0x11, 0xe0, 0x71 };
static size_t cad_pos;

static int poll_i8042(void)
{
    while (inb(0x64) & 0x01) {
        uint8_t b = inb(0x60);
        if (b == cad_seq[cad_pos])
            cad_pos++;
        else
            cad_pos = (b == cad_seq[0]) ? 1 : 0;
        if (cad_pos == sizeof(cad_seq))
            return 1;
    }
    return 0;
}

/* ----------------------------------------------------------------- main */

#define BOOT_PARAMS_CMD_LINE_PTR 0x228

uint64_t boot_params_addr;

__attribute__((noreturn)) void guest_main(uint64_t boot_params)
{
    boot_params_addr = boot_params;
    const char *cmdline = NULL;
    if (boot_params) {
        uint32_t ptr = *(volatile uint32_t *)(uintptr_t)(boot_params + BOOT_PARAMS_CMD_LINE_PTR);
        if (ptr)
            cmdline = (const char *)(uintptr_t)ptr;
    }
    parse_cmdline(cmdline);

    if (cfg.mode == MODE_HANG)
        halt_forever(); /* silent, ignores every input */

    struct line l = { .len = 0 };
    ln_str(&l, "microvm-guest: banner version=1 mode=");
    ln_str(&l, mode_names[cfg.mode]);
    ln_str(&l, " heartbeat_ms=");
    ln_dec(&l, cfg.heartbeat_ms);
    ln_emit(&l);

    switch (cfg.mode) {
    case MODE_TRIPLE_FAULT:
        triple_fault();
    case MODE_EXIT:
        if (dev_configured()) { /* one-shot device actions, then stop */
            clock_init();
            idle_init();
            dev_start(0);
        }
        goodbye();
    case MODE_CRASH:
        crash();
    default:
        break;
    }

    clock_init();
    idle_init();
    const int devices = dev_configured();
    if (devices)
        dev_start(1);

    const uint64_t interval = cfg.heartbeat_ms * 1000000ull;
    uint64_t beat = 0;
    uint64_t next = now_ns() + interval;

    for (;;) {
        uint64_t sleep = TICK_NS;
        poll_serial();
        if (poll_i8042())
            goodbye();
        if (interval) {
            uint64_t now = now_ns();
            if (now >= next) {
                ln_str(&l, "microvm-guest: heartbeat ");
                ln_dec(&l, ++beat);
                ln_emit(&l);
                next += interval;
                if (next <= now) /* fell behind (paused VM): no burst */
                    next = now + interval;
            }
            if (next - now < sleep)
                sleep = next - now;
        }
        if (devices) {
            dev_poll(); /* vsock, net, balloon servers */
            if (sleep > DEV_TICK_NS)
                sleep = DEV_TICK_NS;
        }
        idle(sleep);
    }
}
