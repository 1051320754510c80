/*
 * virtio-mmio devices of the microvm test guest: block, net (+ MMDS),
 * vsock, balloon and entropy, all driven by polling (no interrupts).
 *
 * Devices are found from the `virtio_mmio.device=4K@0xd0000000:5` tokens
 * Firecracker appends to the command line and told apart by DeviceID, never
 * by order.  Nothing here runs unless a `microvm.<device>` option is given
 * (see README.md for the options and the exact console lines).
 */
#include "guest.h"

#define barrier() __asm__ volatile("" ::: "memory")
#define cpu_relax() __asm__ volatile("pause" ::: "memory")

/* ------------------------------------------------------------ helpers */

static uint16_t get16be(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put16be(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static int val_is_n(const char *v, size_t n, const char *word)
{
    size_t k = str_len(word);
    if (n != k)
        return 0;
    for (size_t i = 0; i < k; i++)
        if (v[i] != word[i])
            return 0;
    return 1;
}

static int mem_eq(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    while (n--)
        if (*x++ != *y++)
            return 0;
    return 1;
}

/* Parse a decimal or 0x-hex number from [*p, end); advances *p. */
static int parse_num(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    int base = 10, digits = 0;
    if (end - s > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (; s < end; s++, digits++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (!digits)
        return 0;
    *p = s;
    *out = v;
    return 1;
}

/* "a.b.c.d" -> host-order address. */
static int parse_ip(const char *s, size_t n, uint32_t *ip)
{
    const char *p = s, *end = s + n;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t b;
        if (!parse_num(&p, end, &b) || b > 255)
            return 0;
        v = v << 8 | (uint32_t)b;
        if (i < 3) {
            if (p >= end || *p != '.')
                return 0;
            p++;
        }
    }
    if (p != end)
        return 0;
    *ip = v;
    return 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "xx:xx:xx:xx:xx:xx" */
static int parse_mac(const char *s, size_t n, uint8_t mac[6])
{
    if (n != 17)
        return 0;
    for (int i = 0; i < 6; i++) {
        int h = hexval(s[3 * i]), l = hexval(s[3 * i + 1]);
        if (h < 0 || l < 0 || (i < 5 && s[3 * i + 2] != ':'))
            return 0;
        mac[i] = (uint8_t)(h << 4 | l);
    }
    return 1;
}

static void ln_ip(struct line *l, uint32_t ip)
{
    for (int i = 3; i >= 0; i--) {
        ln_dec(l, (ip >> (8 * i)) & 0xff);
        if (i)
            ln_char(l, '.');
    }
}

static void ln_mac(struct line *l, const uint8_t *mac)
{
    for (int i = 0; i < 6; i++) {
        ln_hex(l, mac[i], 2);
        if (i < 5)
            ln_char(l, ':');
    }
}

static void ln_bytes_hex(struct line *l, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ln_hex(l, p[i], 2);
}

/* Printable ASCII as is, '\\' as "\\\\", anything else as \xHH; stops at max chars. */
static void ln_escaped(struct line *l, const uint8_t *p, size_t n, size_t max)
{
    size_t start = l->len;
    for (size_t i = 0; i < n && l->len - start + 4 <= max; i++) {
        if (p[i] == '\\') {
            ln_str(l, "\\\\");
        } else if (p[i] >= 0x20 && p[i] < 0x7f) {
            ln_char(l, (char)p[i]);
        } else {
            ln_str(l, "\\x");
            ln_hex(l, p[i], 2);
        }
    }
}

static void ln_pfx(struct line *l, const char *what, int idx)
{
    ln_str(l, "microvm-guest: ");
    ln_str(l, what);
    if (idx >= 0)
        ln_dec(l, (uint64_t)idx);
    ln_char(l, ' ');
}

/* zlib's CRC-32 (reflected 0xedb88320), table driven: the guest is slow. */
static uint32_t crc_table[256];

static uint32_t crc32(const uint8_t *p, size_t n)
{
    if (!crc_table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    uint32_t c = 0xffffffffu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

/* Bump allocator for rings and buffers (identity-mapped, so phys == virt). */
static uint8_t arena[768 * 1024] __attribute__((aligned(4096)));
static size_t arena_used;

static void *alloc(size_t n, size_t align)
{
    size_t off = (arena_used + align - 1) & ~(align - 1);
    if (off + n > sizeof(arena))
        return NULL;
    arena_used = off + n;
    return arena + off;
}

/* ------------------------------------------------------- MMIO window */

/*
 * Firecracker identity-maps only the first GiB (PML4 -> PDPT[0] -> 2 MiB
 * pages).  The virtio-mmio windows are at 0xd0000000+, in the fourth GiB:
 * point PDPT[3] at our own page directory of uncached 2 MiB pages.
 */
static uint64_t mmio_pd[512] __attribute__((aligned(4096)));

static void map_mmio(void)
{
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & 0x000ffffffffff000ull);
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & 0x000ffffffffff000ull);
    for (uint64_t i = 0; i < 512; i++)
        mmio_pd[i] = (0xc0000000ull + (i << 21)) | 0x9b; /* P RW PWT PCD PS */
    pdpt[3] = (uint64_t)(uintptr_t)mmio_pd | 0x3;
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

/* ------------------------------------------------------ virtio-mmio */

#define VIRTIO_MAGIC 0x74726976u
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_AVAIL 0x090
#define R_QUEUE_USED 0x0a0
#define R_CONFIG 0x100

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

enum { ID_NET = 1, ID_BLK = 2, ID_RNG = 4, ID_BALLOON = 5, ID_VSOCK = 19 };

struct vdev {
    uint64_t base;
    uint32_t irq;
    uint32_t id;    /* DeviceID, 0 if nothing answers */
    int index;      /* among the devices of the same DeviceID, by address */
    uint32_t features; /* negotiated, page 0 */
};

#define MAX_DEV 16
static struct vdev devs[MAX_DEV];
static int ndev;

static uint32_t mr(const struct vdev *d, uint32_t off)
{
    return *(volatile uint32_t *)(uintptr_t)(d->base + off);
}

static void mw(const struct vdev *d, uint32_t off, uint32_t v)
{
    *(volatile uint32_t *)(uintptr_t)(d->base + off) = v;
}

static uint8_t cfg8(const struct vdev *d, uint32_t off)
{
    return *(volatile uint8_t *)(uintptr_t)(d->base + R_CONFIG + off);
}

static uint32_t cfg32(const struct vdev *d, uint32_t off) { return mr(d, R_CONFIG + off); }

static const char *kind_name(uint32_t id)
{
    switch (id) {
    case ID_NET: return "net";
    case ID_BLK: return "blk";
    case ID_RNG: return "rng";
    case ID_BALLOON: return "balloon";
    case ID_VSOCK: return "vsock";
    default: return "other";
    }
}

static struct vdev *find_dev(uint32_t id, int index)
{
    for (int i = 0; i < ndev; i++)
        if (devs[i].id == id && devs[i].index == index)
            return &devs[i];
    return NULL;
}

/* "4K@0xd0000000:5" */
static void add_mmio_token(const char *v, size_t n)
{
    const char *p = v, *end = v + n;
    while (p < end && *p != '@')
        p++;
    if (p == end || ndev == MAX_DEV)
        return;
    p++;
    uint64_t base, irq = 0;
    if (!parse_num(&p, end, &base))
        return;
    if (p < end && *p == ':') {
        p++;
        parse_num(&p, end, &irq);
    }
    if (base < 0xc0000000ull || base >= 0x100000000ull)
        return; /* only the window we map */
    for (int i = 0; i < ndev; i++)
        if (devs[i].base == base)
            return;
    devs[ndev].base = base;
    devs[ndev].irq = (uint32_t)irq;
    ndev++;
}

/* Map the window, read every device's identity, number them by address. */
static void probe_devices(void)
{
    map_mmio();
    for (int i = 1; i < ndev; i++) /* insertion sort by address */
        for (int j = i; j > 0 && devs[j - 1].base > devs[j].base; j--) {
            struct vdev t = devs[j];
            devs[j] = devs[j - 1];
            devs[j - 1] = t;
        }
    for (int i = 0; i < ndev; i++) {
        struct vdev *d = &devs[i];
        if (mr(d, R_MAGIC) == VIRTIO_MAGIC && mr(d, R_VERSION) == 2)
            d->id = mr(d, R_DEVICE_ID);
        d->index = 0;
        for (int j = 0; j < i; j++)
            if (devs[j].id == d->id)
                d->index++;
        struct line l = { .len = 0 };
        ln_pfx(&l, "virtio", -1);
        ln_str(&l, kind_name(d->id));
        ln_dec(&l, (uint64_t)d->index);
        ln_str(&l, " addr=0x");
        ln_hex(&l, d->base, 8);
        ln_str(&l, " irq=");
        ln_dec(&l, d->irq);
        ln_str(&l, " device_id=");
        ln_dec(&l, d->id);
        ln_emit(&l);
    }
}

/*
 * Status handshake (strictly cumulative: 1, 3, 0xb, then 0xf once every
 * queue is set up).  Accepts VERSION_1 plus the wanted page-0 features the
 * device offers.  Returns 0 on success.
 */
static int vdev_begin(struct vdev *d, uint32_t want)
{
    mw(d, R_STATUS, S_ACKNOWLEDGE);
    mw(d, R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    mw(d, R_DEV_FEATURES_SEL, 0);
    uint32_t lo = mr(d, R_DEV_FEATURES);
    mw(d, R_DEV_FEATURES_SEL, 1);
    uint32_t hi = mr(d, R_DEV_FEATURES);
    if (!(hi & 1)) /* VIRTIO_F_VERSION_1 (bit 32) */
        return -1;
    d->features = lo & want;
    mw(d, R_DRV_FEATURES_SEL, 0);
    mw(d, R_DRV_FEATURES, d->features);
    mw(d, R_DRV_FEATURES_SEL, 1);
    mw(d, R_DRV_FEATURES, 1);
    mw(d, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    return mr(d, R_STATUS) & S_FEATURES_OK ? 0 : -1;
}

static int vdev_finish(struct vdev *d)
{
    mw(d, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    uint32_t s = mr(d, R_STATUS);
    return (s & S_DRIVER_OK) && !(s & S_NEEDS_RESET) ? 0 : -1;
}

/* Split virtqueue. */
struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
#define D_NEXT 1
#define D_WRITE 2

struct vq {
    struct vdev *dev;
    uint16_t sel, num;
    volatile struct vring_desc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[num], used_event */
    volatile uint8_t *used;   /* flags, idx, {u32 id, u32 len}[num] */
    uint16_t avail_idx, last_used;
};

static int vq_setup(struct vdev *d, struct vq *q, uint16_t sel, uint16_t want)
{
    mw(d, R_QUEUE_SEL, sel);
    if (mr(d, R_QUEUE_READY))
        return -1;
    uint32_t max = mr(d, R_QUEUE_NUM_MAX);
    if (!max)
        return -1;
    uint16_t num = want;
    while (num > max)
        num >>= 1;
    q->dev = d;
    q->sel = sel;
    q->num = num;
    q->desc = alloc(16u * num, 4096);
    q->avail = alloc(6u + 2u * num, 4096);
    q->used = alloc(6u + 8u * num, 4096);
    if (!q->desc || !q->avail || !q->used)
        return -1;
    q->avail_idx = q->last_used = 0;
    mw(d, R_QUEUE_NUM, num);
    uint64_t a = (uint64_t)(uintptr_t)q->desc;
    mw(d, R_QUEUE_DESC, (uint32_t)a);
    mw(d, R_QUEUE_DESC + 4, (uint32_t)(a >> 32));
    a = (uint64_t)(uintptr_t)q->avail;
    mw(d, R_QUEUE_AVAIL, (uint32_t)a);
    mw(d, R_QUEUE_AVAIL + 4, (uint32_t)(a >> 32));
    a = (uint64_t)(uintptr_t)q->used;
    mw(d, R_QUEUE_USED, (uint32_t)a);
    mw(d, R_QUEUE_USED + 4, (uint32_t)(a >> 32));
    mw(d, R_QUEUE_READY, 1);
    return 0;
}

static void vq_desc(struct vq *q, uint16_t i, const void *buf, uint32_t len, uint16_t flags, uint16_t next)
{
    q->desc[i].addr = (uint64_t)(uintptr_t)buf;
    q->desc[i].len = len;
    q->desc[i].flags = flags;
    q->desc[i].next = next;
}

/* Make the chain starting at head available (no notification). */
static void vq_add(struct vq *q, uint16_t head)
{
    q->avail[2 + q->avail_idx % q->num] = head;
    barrier();
    q->avail[1] = ++q->avail_idx;
    barrier();
}

static void vq_kick(struct vq *q) { mw(q->dev, R_QUEUE_NOTIFY, q->sel); }

/* Next used element, if any. */
static int vq_get(struct vq *q, uint16_t *id, uint32_t *len)
{
    if (*(volatile uint16_t *)(q->used + 2) == q->last_used)
        return 0;
    barrier();
    volatile uint8_t *e = q->used + 4 + 8u * (q->last_used % q->num);
    *id = (uint16_t)*(volatile uint32_t *)e;
    *len = *(volatile uint32_t *)(e + 4);
    q->last_used++;
    return 1;
}

/* Submit head, notify, and spin until the device has used it. */
static int vq_run(struct vq *q, uint16_t head, uint32_t *len, uint64_t timeout_ns)
{
    uint16_t id;
    uint32_t n;
    vq_add(q, head);
    vq_kick(q);
    uint64_t deadline = now_ns() + timeout_ns;
    for (;;) {
        if (vq_get(q, &id, &n)) {
            if (len)
                *len = n;
            return 0;
        }
        if (now_ns() > deadline)
            return -1;
        for (int i = 0; i < 50; i++)
            cpu_relax();
    }
}

/* ------------------------------------------------------------- block */

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_F_RO (1u << 5)
#define BLK_F_FLUSH (1u << 9)
#define BLK_MAX_SECTORS 128 /* 64 KiB per request */
#define BLK_TIMEOUT (-1)    /* the device never answered (5 s) */
#define BLK_NONE (-2)       /* answered without writing a status (request rejected) */

struct blk_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct blk {
    struct vdev *d;
    struct vq q;
    uint64_t capacity;
    int state; /* 0 not tried, 1 ready, -1 failed */
} blks[8];

static struct blk_hdr *blk_hdr;
static volatile uint8_t *blk_status;
static uint8_t *blk_buf;

static struct blk *blk_get(int index)
{
    struct line l = { .len = 0 };
    struct vdev *d = find_dev(ID_BLK, index);
    if (index < 0 || index >= 8 || !d) {
        ln_pfx(&l, "blk", index);
        ln_str(&l, "error=no-device");
        ln_emit(&l);
        return NULL;
    }
    struct blk *b = &blks[index];
    if (b->state)
        return b->state > 0 ? b : NULL;
    b->d = d;
    b->state = -1;
    if (!blk_buf) {
        blk_hdr = alloc(sizeof(*blk_hdr), 16);
        blk_status = alloc(1, 16);
        blk_buf = alloc(BLK_MAX_SECTORS * 512, 4096);
    }
    int err = !blk_buf || vdev_begin(d, BLK_F_RO | BLK_F_FLUSH) || vq_setup(d, &b->q, 0, 16) || vdev_finish(d);
    b->capacity = (uint64_t)cfg32(d, 0) | (uint64_t)cfg32(d, 4) << 32;
    ln_pfx(&l, "blk", index);
    if (err) {
        ln_str(&l, "error=init");
        ln_emit(&l);
        return NULL;
    }
    b->state = 1;
    ln_str(&l, "ready capacity=");
    ln_dec(&l, b->capacity);
    ln_str(&l, " ro=");
    ln_dec(&l, d->features & BLK_F_RO ? 1 : 0);
    ln_emit(&l);
    return b;
}

/* One request (header, optional data, status); returns the status byte. */
static int blk_request(struct blk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
    blk_hdr->type = type;
    blk_hdr->reserved = 0;
    blk_hdr->sector = sector;
    *blk_status = 0xff;
    struct vq *q = &b->q;
    vq_desc(q, 0, blk_hdr, sizeof(*blk_hdr), D_NEXT, 1);
    if (len) {
        vq_desc(q, 1, buf, len, D_NEXT | (type == BLK_T_OUT ? 0 : D_WRITE), 2);
        vq_desc(q, 2, (const void *)blk_status, 1, D_WRITE, 0);
    } else {
        vq_desc(q, 1, (const void *)blk_status, 1, D_WRITE, 0);
    }
    if (vq_run(q, 0, NULL, 5000000000ull))
        return BLK_TIMEOUT;
    return *blk_status == 0xff ? BLK_NONE : *blk_status;
}

static void ln_status(struct line *l, int st)
{
    ln_str(l, "status=");
    if (st == BLK_TIMEOUT)
        ln_str(l, "timeout");
    else if (st == BLK_NONE)
        ln_str(l, "none");
    else
        ln_dec(l, (uint64_t)st);
}

static void blk_pattern(uint8_t *p, uint64_t sector, uint32_t count, uint64_t seed)
{
    for (uint32_t s = 0; s < count; s++)
        for (uint32_t j = 0; j < 512; j++)
            *p++ = (uint8_t)(j + sector + s + seed);
}

static void blk_op(int index, const char *op, size_t n)
{
    struct blk *b = blk_get(index);
    if (!b)
        return;
    struct line l = { .len = 0 };
    const char *p = op, *end = op + n;
    uint64_t a[3] = { 0, 1, 0 }; /* sector, count, seed */
    size_t name_len = 0;
    while (name_len < n && op[name_len] != ':')
        name_len++;
    p = op + name_len;
    for (int i = 0; i < 3 && p < end && *p == ':'; i++) {
        p++;
        if (!parse_num(&p, end, &a[i]))
            break;
    }
    if (a[1] < 1)
        a[1] = 1;
    ln_pfx(&l, "blk", index);
    int st;
    if (val_is_n(op, name_len, "read") || val_is_n(op, name_len, "write")) {
        int wr = op[0] == 'w';
        uint32_t count = a[1] > BLK_MAX_SECTORS ? BLK_MAX_SECTORS : (uint32_t)a[1];
        if (wr)
            blk_pattern(blk_buf, a[0], count, a[2]);
        else
            memset(blk_buf, 0, count * 512);
        st = blk_request(b, wr ? BLK_T_OUT : BLK_T_IN, a[0], blk_buf, count * 512);
        ln_str(&l, wr ? "write sector=" : "read sector=");
        ln_dec(&l, a[0]);
        ln_str(&l, " count=");
        ln_dec(&l, count);
        ln_char(&l, ' ');
        ln_status(&l, st);
        ln_str(&l, " crc32=");
        ln_hex(&l, crc32(blk_buf, count * 512), 8);
        if (!wr) {
            ln_str(&l, " head=");
            ln_bytes_hex(&l, blk_buf, 16);
        }
    } else if (val_is_n(op, name_len, "flush")) {
        st = blk_request(b, BLK_T_FLUSH, 0, NULL, 0);
        ln_str(&l, "flush ");
        ln_status(&l, st);
    } else if (val_is_n(op, name_len, "id")) {
        memset(blk_buf, 0, 20);
        st = blk_request(b, BLK_T_GET_ID, 0, blk_buf, 20);
        size_t len = 0;
        while (len < 20 && blk_buf[len])
            len++;
        ln_str(&l, "id ");
        ln_status(&l, st);
        ln_str(&l, " serial=");
        ln_escaped(&l, blk_buf, len, 80);
    } else if (val_is_n(op, name_len, "bench-read") || val_is_n(op, name_len, "bench-write")) {
        int wr = op[6] == 'w';
        uint64_t left = a[1], sector = a[0], bytes = 0;
        st = 0;
        if (wr)
            blk_pattern(blk_buf, 0, BLK_MAX_SECTORS, 0);
        uint64_t t0 = now_ns();
        while (left && !st) {
            uint32_t c = left > BLK_MAX_SECTORS ? BLK_MAX_SECTORS : (uint32_t)left;
            st = blk_request(b, wr ? BLK_T_OUT : BLK_T_IN, sector, blk_buf, c * 512);
            if (!st)
                bytes += c * 512ull;
            sector += c;
            left -= c;
        }
        uint64_t ns = now_ns() - t0;
        if (!ns)
            ns = 1;
        uint64_t centi = bytes * 100000ull / ns; /* MB/s (10^6 B/s) x 100 */
        ln_str(&l, wr ? "bench-write sector=" : "bench-read sector=");
        ln_dec(&l, a[0]);
        ln_str(&l, " count=");
        ln_dec(&l, a[1]);
        ln_char(&l, ' ');
        ln_status(&l, st);
        ln_str(&l, " bytes=");
        ln_dec(&l, bytes);
        ln_str(&l, " us=");
        ln_dec(&l, ns / 1000);
        ln_str(&l, " mbps=");
        ln_dec(&l, centi / 100);
        ln_char(&l, '.');
        ln_dec(&l, centi / 10 % 10);
        ln_dec(&l, centi % 10);
    } else {
        ln_str(&l, "error=bad-op op=");
        ln_escaped(&l, (const uint8_t *)op, n, 64);
    }
    ln_emit(&l);
}

/* "microvm.blk=<index>,<op>,<op>..." */
static void blk_run(const char *v, size_t n)
{
    const char *p = v, *end = v + n;
    uint64_t index;
    if (!parse_num(&p, end, &index))
        return;
    if (index > 7) {
        struct line l = { .len = 0 };
        ln_str(&l, "microvm-guest: blk");
        ln_dec(&l, index);
        ln_str(&l, " error=no-device");
        ln_emit(&l);
        return;
    }
    while (p < end) {
        if (*p == ',') {
            p++;
            continue;
        }
        const char *op = p;
        while (p < end && *p != ',')
            p++;
        blk_op((int)index, op, (size_t)(p - op));
    }
}

/* ----------------------------------------------------------- entropy */

static void rng_run(uint64_t want)
{
    struct line l = { .len = 0 };
    struct vdev *d = find_dev(ID_RNG, 0);
    static struct vq q;
    ln_pfx(&l, "rng", -1);
    uint8_t *buf = alloc(128, 16);
    if (want > 128) /* 256 hex digits still fit a console line */
        want = 128;
    if (!d || !buf || vdev_begin(d, 0) || vq_setup(d, &q, 0, 16) || vdev_finish(d)) {
        ln_str(&l, d ? "error=init" : "error=no-device");
        ln_emit(&l);
        return;
    }
    uint32_t got = 0;
    vq_desc(&q, 0, buf, (uint32_t)want, D_WRITE, 0);
    int err = vq_run(&q, 0, &got, 5000000000ull);
    if (got > want)
        got = (uint32_t)want;
    ln_str(&l, "read bytes=");
    ln_dec(&l, err ? 0 : got);
    ln_str(&l, " status=");
    ln_str(&l, err ? "timeout" : "ok");
    ln_str(&l, " hex=");
    if (!err)
        ln_bytes_hex(&l, buf, got);
    ln_emit(&l);
}

/* ------------------------------------------------------------- vsock */

struct vsock_hdr {
    uint64_t src_cid;
    uint64_t dst_cid;
    uint32_t src_port;
    uint32_t dst_port;
    uint32_t len;
    uint16_t type;
    uint16_t op;
    uint32_t flags;
    uint32_t buf_alloc;
    uint32_t fwd_cnt;
} __attribute__((packed));

enum { VS_REQUEST = 1, VS_RESPONSE, VS_RST, VS_SHUTDOWN, VS_RW, VS_CREDIT_UPDATE, VS_CREDIT_REQUEST };
#define VS_TYPE_STREAM 1
#define VS_HOST_CID 2
#define VS_RX_BUFS 32
#define VS_BUF 4096
#define VS_BUF_ALLOC 65536 /* what we advertise: we consume (echo) at once */
#define VS_MAX_CONN 8
#define VS_MAX_PORTS 4
#define VS_LOCAL_PORT0 49152 /* first local port of guest-initiated connections */

enum { C_FREE, C_CONNECTING, C_OPEN };

static struct vconn {
    int state;
    uint32_t lport, pport;
    uint32_t fwd_cnt;          /* bytes received and consumed */
    uint32_t tx_cnt;           /* bytes sent */
    uint32_t peer_alloc, peer_fwd;
    int initiated;             /* by the guest */
} vconns[VS_MAX_CONN];

static struct {
    struct vdev *d;
    struct vq rx, tx, ev;
    uint64_t cid;
    uint8_t *rxbuf, *txbuf, *evbuf;
    int ready;
    uint32_t listen[VS_MAX_PORTS];
    int nlisten;
    uint32_t connect[VS_MAX_PORTS];
    int nconnect;
} vs;

static void vs_line_conn(struct line *l, const char *what, struct vconn *c)
{
    ln_pfx(l, "vsock", -1);
    ln_str(l, what);
    ln_str(l, " port=");
    ln_dec(l, c->initiated ? c->pport : c->lport);
    ln_str(l, " peer=");
    ln_dec(l, VS_HOST_CID);
    ln_char(l, ':');
    ln_dec(l, c->pport);
    ln_str(l, " local=");
    ln_dec(l, c->lport);
}

/* Send one packet (synchronously: TX has one buffer). */
static int vs_send(uint32_t lport, uint32_t pport, uint16_t op, uint32_t flags, uint32_t fwd_cnt,
                   const uint8_t *data, uint32_t len)
{
    if (len > VS_BUF - sizeof(struct vsock_hdr))
        len = VS_BUF - sizeof(struct vsock_hdr);
    struct vsock_hdr *h = (struct vsock_hdr *)vs.txbuf;
    h->src_cid = vs.cid;
    h->dst_cid = VS_HOST_CID;
    h->src_port = lport;
    h->dst_port = pport;
    h->len = len;
    h->type = VS_TYPE_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = VS_BUF_ALLOC;
    h->fwd_cnt = fwd_cnt;
    if (len)
        memcpy(vs.txbuf + sizeof(*h), data, len);
    vq_desc(&vs.tx, 0, vs.txbuf, (uint32_t)sizeof(*h) + len, 0, 0);
    return vq_run(&vs.tx, 0, NULL, 1000000000ull);
}

static int vs_send_conn(struct vconn *c, uint16_t op, const uint8_t *data, uint32_t len)
{
    int r = vs_send(c->lport, c->pport, op, 0, c->fwd_cnt, data, len);
    c->tx_cnt += len;
    return r;
}

static struct vconn *vs_find(uint32_t lport, uint32_t pport)
{
    for (int i = 0; i < VS_MAX_CONN; i++)
        if (vconns[i].state != C_FREE && vconns[i].lport == lport && vconns[i].pport == pport)
            return &vconns[i];
    return NULL;
}

static struct vconn *vs_alloc(uint32_t lport, uint32_t pport, int state)
{
    for (int i = 0; i < VS_MAX_CONN; i++)
        if (vconns[i].state == C_FREE) {
            struct vconn *c = &vconns[i];
            memset(c, 0, sizeof(*c));
            c->state = state;
            c->lport = lport;
            c->pport = pport;
            return c;
        }
    return NULL;
}

static void vs_close(struct vconn *c, const char *reason, int send_rst)
{
    struct line l = { .len = 0 };
    if (send_rst)
        vs_send_conn(c, VS_RST, NULL, 0);
    vs_line_conn(&l, "close", c);
    ln_str(&l, " reason=");
    ln_str(&l, reason);
    ln_str(&l, " rx=");
    ln_dec(&l, c->fwd_cnt);
    ln_str(&l, " tx=");
    ln_dec(&l, c->tx_cnt);
    ln_emit(&l);
    c->state = C_FREE;
}

static void vs_packet(const struct vsock_hdr *h, const uint8_t *data, uint32_t len)
{
    struct line l = { .len = 0 };
    if (h->type != VS_TYPE_STREAM || h->dst_cid != vs.cid)
        return;
    struct vconn *c = vs_find(h->dst_port, h->src_port);
    if (c) {
        c->peer_alloc = h->buf_alloc;
        c->peer_fwd = h->fwd_cnt;
    }
    switch (h->op) {
    case VS_REQUEST: {
        int listening = 0;
        for (int i = 0; i < vs.nlisten; i++)
            listening |= vs.listen[i] == h->dst_port;
        if (c || !listening || !(c = vs_alloc(h->dst_port, h->src_port, C_OPEN))) {
            vs_send(h->dst_port, h->src_port, VS_RST, 0, 0, NULL, 0);
            return;
        }
        c->peer_alloc = h->buf_alloc;
        c->peer_fwd = h->fwd_cnt;
        vs_send_conn(c, VS_RESPONSE, NULL, 0);
        vs_line_conn(&l, "accept", c);
        ln_emit(&l);
        return;
    }
    case VS_RESPONSE:
        if (!c || c->state != C_CONNECTING) {
            vs_send(h->dst_port, h->src_port, VS_RST, 0, 0, NULL, 0);
            return;
        }
        c->state = C_OPEN;
        vs_line_conn(&l, "connect", c);
        ln_str(&l, " status=ok");
        ln_emit(&l);
        {
            /* The greeting: one line the host can wait for. */
            struct line g = { .len = 0 };
            ln_str(&g, "hello from microvm-guest port=");
            ln_dec(&g, c->pport);
            ln_char(&g, '\n');
            vs_send_conn(c, VS_RW, (const uint8_t *)g.buf, (uint32_t)g.len);
        }
        return;
    case VS_RST:
        if (c && c->state == C_CONNECTING) {
            vs_line_conn(&l, "connect", c);
            ln_str(&l, " status=rst");
            ln_emit(&l);
            c->state = C_FREE;
        } else if (c) {
            vs_close(c, "rst", 0);
        }
        return;
    case VS_SHUTDOWN:
        if (c)
            vs_close(c, "shutdown", 1);
        return;
    case VS_RW:
        if (!c || c->state != C_OPEN) {
            vs_send(h->dst_port, h->src_port, VS_RST, 0, 0, NULL, 0);
            return;
        }
        c->fwd_cnt += len;
        if (len) { /* echo exactly what came in */
            uint32_t credit = c->peer_alloc - (c->tx_cnt - c->peer_fwd);
            if (credit < len) {
                ln_pfx(&l, "vsock", -1);
                ln_str(&l, "warning=no-credit");
                ln_emit(&l);
            }
            vs_send_conn(c, VS_RW, data, len);
        }
        return;
    case VS_CREDIT_REQUEST:
        if (c)
            vs_send_conn(c, VS_CREDIT_UPDATE, NULL, 0);
        return;
    default: /* CREDIT_UPDATE: credit taken above */
        return;
    }
}

static void vs_poll(void)
{
    uint16_t id;
    uint32_t len;
    int n = 0;
    if (!vs.ready)
        return;
    while (vq_get(&vs.rx, &id, &len)) {
        if (id < VS_RX_BUFS && len >= sizeof(struct vsock_hdr)) {
            const struct vsock_hdr *h = (const void *)(vs.rxbuf + (size_t)id * VS_BUF);
            uint32_t dlen = h->len;
            if (dlen > len - sizeof(*h))
                dlen = len - (uint32_t)sizeof(*h);
            vs_packet(h, (const uint8_t *)(h + 1), dlen);
        }
        vq_add(&vs.rx, id);
        n++;
    }
    while (vq_get(&vs.ev, &id, &len)) /* transport reset (after a snapshot restore) */
        vq_add(&vs.ev, id);
    if (n)
        vq_kick(&vs.rx);
}

static void vs_start(void)
{
    struct line l = { .len = 0 };
    struct vdev *d = find_dev(ID_VSOCK, 0);
    vs.rxbuf = alloc(VS_RX_BUFS * VS_BUF, 4096);
    vs.txbuf = alloc(VS_BUF, 4096);
    vs.evbuf = alloc(4 * 8, 16);
    ln_pfx(&l, "vsock", -1);
    if (!d || !vs.evbuf || vdev_begin(d, 0) || vq_setup(d, &vs.rx, 0, VS_RX_BUFS) ||
        vq_setup(d, &vs.tx, 1, 8) || vq_setup(d, &vs.ev, 2, 4)) {
        ln_str(&l, d ? "error=init" : "error=no-device");
        ln_emit(&l);
        return;
    }
    for (uint16_t i = 0; i < vs.rx.num; i++) {
        vq_desc(&vs.rx, i, vs.rxbuf + (size_t)i * VS_BUF, VS_BUF, D_WRITE, 0);
        vq_add(&vs.rx, i);
    }
    for (uint16_t i = 0; i < vs.ev.num; i++) {
        vq_desc(&vs.ev, i, vs.evbuf + 8 * i, 8, D_WRITE, 0);
        vq_add(&vs.ev, i);
    }
    if (vdev_finish(d)) {
        ln_str(&l, "error=init");
        ln_emit(&l);
        return;
    }
    vs.d = d;
    vs.cid = (uint64_t)cfg32(d, 0) | (uint64_t)cfg32(d, 4) << 32;
    vs.ready = 1;
    vq_kick(&vs.rx);
    vq_kick(&vs.ev);
    ln_str(&l, "ready cid=");
    ln_dec(&l, vs.cid);
    for (int i = 0; i < vs.nlisten; i++) {
        ln_str(&l, " listen=");
        ln_dec(&l, vs.listen[i]);
    }
    ln_emit(&l);
    for (int i = 0; i < vs.nconnect; i++) {
        struct vconn *c = vs_alloc(VS_LOCAL_PORT0 + (uint32_t)i, vs.connect[i], C_CONNECTING);
        if (!c)
            break;
        c->initiated = 1;
        vs_send_conn(c, VS_REQUEST, NULL, 0);
    }
}

/* --------------------------------------------------------------- net */

#define NET_HDR 12           /* virtio_net_hdr_v1 (VERSION_1, no offloads) */
#define NET_F_MAC (1u << 5)
#define NET_RX_BUFS 64       /* 64 x 2 KiB: Firecracker reads the TAP only */
#define NET_BUF 2048         /* with >= 65,562 bytes posted, >= 1,526 each */
#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define IP_UDP 17
#define IP_TCP 6
#define MMDS_IP 0xa9fea9feu  /* 169.254.169.254 */

static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static struct {
    struct vdev *d;
    struct vq rx, tx;
    uint8_t *rxbuf, *txbuf;
    int ready, mac_set;
    uint8_t mac[6];
    uint32_t ip, host_ip;
    uint16_t echo_port, hello_port;
    uint8_t host_mac[6], mmds_mac[6];
    int host_mac_ok, mmds_mac_ok;
    uint16_t ip_id;
} net;

static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += get16be(p + i);
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Frame buffer for the next transmission (after the virtio-net header). */
static uint8_t *net_frame(void) { return net.txbuf + NET_HDR; }

static int net_send(size_t frame_len)
{
    /* No padding to 60 bytes: MMDS takes an ARP request only if its payload is exactly 28 bytes. */
    memset(net.txbuf, 0, NET_HDR);
    vq_desc(&net.tx, 0, net.txbuf, (uint32_t)(NET_HDR + frame_len), 0, 0);
    return vq_run(&net.tx, 0, NULL, 1000000000ull);
}

static void eth_hdr(uint8_t *f, const uint8_t *dst, uint16_t type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, net.mac, 6);
    put16be(f + 12, type);
}

static void arp_send(uint16_t op, const uint8_t *dst_mac, uint32_t target_ip)
{
    uint8_t *f = net_frame();
    eth_hdr(f, op == 1 ? bcast : dst_mac, ETH_ARP);
    uint8_t *a = f + 14;
    put16be(a, 1);
    put16be(a + 2, ETH_IP);
    a[4] = 6;
    a[5] = 4;
    put16be(a + 6, op);
    memcpy(a + 8, net.mac, 6);
    put32be(a + 14, net.ip);
    if (op == 1)
        memset(a + 18, 0, 6);
    else
        memcpy(a + 18, dst_mac, 6);
    put32be(a + 24, target_ip);
    net_send(14 + 28);
}

/* IPv4 header at f+14 for a payload of plen bytes; returns the payload. */
static uint8_t *ip_hdr(uint8_t *f, const uint8_t *dst_mac, uint32_t dst, uint8_t proto, size_t plen)
{
    eth_hdr(f, dst_mac, ETH_IP);
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[1] = 0;
    put16be(ip + 2, (uint16_t)(20 + plen));
    put16be(ip + 4, net.ip_id++);
    put16be(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = proto;
    put16be(ip + 10, 0);
    put32be(ip + 12, net.ip);
    put32be(ip + 16, dst);
    put16be(ip + 10, csum_fold(csum_add(0, ip, 20)));
    return ip + 20;
}

/* Checksum of a UDP/TCP segment with its IPv4 pseudo header. */
static uint16_t l4_csum(uint32_t src, uint32_t dst, uint8_t proto, const uint8_t *seg, size_t len)
{
    uint8_t ph[12];
    put32be(ph, src);
    put32be(ph + 4, dst);
    ph[8] = 0;
    ph[9] = proto;
    put16be(ph + 10, (uint16_t)len);
    return csum_fold(csum_add(csum_add(0, ph, 12), seg, len));
}

static void udp_send(const uint8_t *dst_mac, uint32_t dst, uint16_t sport, uint16_t dport,
                     const uint8_t *data, size_t len)
{
    if (len > 1472)
        len = 1472;
    uint8_t *u = ip_hdr(net_frame(), dst_mac, dst, IP_UDP, 8 + len);
    put16be(u, sport);
    put16be(u + 2, dport);
    put16be(u + 4, (uint16_t)(8 + len));
    put16be(u + 6, 0);
    memcpy(u + 8, data, len);
    uint16_t c = l4_csum(net.ip, dst, IP_UDP, u, 8 + len);
    put16be(u + 6, c ? c : 0xffff);
    net_send(14 + 20 + 8 + len);
}

/* Minimal TCP client for MMDS: one connection at a time. */
enum { T_CLOSED, T_SYN_SENT, T_OPEN };
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define MMDS_RESP_MAX 4096

static struct {
    int state, fin;
    uint16_t lport;
    uint32_t snd_nxt, rcv_nxt;
    uint8_t resp[MMDS_RESP_MAX];
    size_t rlen;
} tcp;

static void tcp_send(uint8_t flags, const uint8_t *data, size_t len)
{
    uint8_t *t = ip_hdr(net_frame(), net.mmds_mac, MMDS_IP, IP_TCP, 20 + len);
    put16be(t, tcp.lport);
    put16be(t + 2, 80);
    put32be(t + 4, tcp.snd_nxt);
    put32be(t + 8, flags & TCP_ACK ? tcp.rcv_nxt : 0);
    t[12] = 5 << 4;
    t[13] = flags;
    put16be(t + 14, 65535);
    put16be(t + 16, 0);
    put16be(t + 18, 0);
    memcpy(t + 20, data, len);
    put16be(t + 16, l4_csum(net.ip, MMDS_IP, IP_TCP, t, 20 + len));
    net_send(14 + 20 + 20 + len);
    tcp.snd_nxt += (uint32_t)len + (flags & (TCP_SYN | TCP_FIN) ? 1 : 0);
}

static void tcp_input(const uint8_t *t, size_t len)
{
    if (len < 20 || get16be(t + 2) != tcp.lport || get16be(t) != 80 || tcp.state == T_CLOSED)
        return;
    size_t off = (size_t)(t[12] >> 4) * 4;
    if (off < 20 || off > len)
        return;
    uint8_t flags = t[13];
    uint32_t seq = get32be(t + 4);
    if (flags & TCP_RST) {
        tcp.state = T_CLOSED;
        tcp.fin = 1;
        return;
    }
    if (tcp.state == T_SYN_SENT) {
        if ((flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK) && get32be(t + 8) == tcp.snd_nxt) {
            tcp.rcv_nxt = seq + 1;
            tcp.state = T_OPEN;
            tcp_send(TCP_ACK, NULL, 0);
        }
        return;
    }
    size_t dlen = len - off;
    int ack = 0;
    if (dlen && seq == tcp.rcv_nxt) {
        size_t room = MMDS_RESP_MAX - tcp.rlen;
        memcpy(tcp.resp + tcp.rlen, t + off, dlen < room ? dlen : room);
        tcp.rlen += dlen < room ? dlen : room;
        tcp.rcv_nxt += (uint32_t)dlen;
        ack = 1;
    } else if (dlen) {
        ack = 1; /* out of order or duplicate: repeat our ACK */
    }
    if ((flags & TCP_FIN) && seq + dlen == tcp.rcv_nxt) {
        tcp.rcv_nxt++;
        tcp.fin = 1;
        ack = 1;
    }
    if (ack)
        tcp_send(TCP_ACK, NULL, 0);
}

static void net_frame_in(uint8_t *f, size_t len)
{
    struct line l = { .len = 0 };
    if (len < 14)
        return;
    uint16_t type = get16be(f + 12);
    if (type == ETH_ARP && len >= 14 + 28) {
        const uint8_t *a = f + 14;
        uint16_t op = get16be(a + 6);
        uint32_t spa = get32be(a + 14), tpa = get32be(a + 24);
        if (spa == net.host_ip && net.host_ip) {
            memcpy(net.host_mac, a + 8, 6);
            net.host_mac_ok = 1;
        }
        if (spa == MMDS_IP && op == 2) {
            memcpy(net.mmds_mac, a + 8, 6);
            net.mmds_mac_ok = 1;
        }
        if (op == 1 && tpa == net.ip && net.ip) {
            uint8_t sha[6];
            memcpy(sha, a + 8, 6);
            arp_send(2, sha, spa);
            ln_pfx(&l, "net", net.d->index);
            ln_str(&l, "arp reply to=");
            ln_ip(&l, spa);
            ln_str(&l, " mac=");
            ln_mac(&l, sha);
            ln_emit(&l);
        }
        return;
    }
    if (type != ETH_IP || len < 14 + 20)
        return;
    uint8_t *ip = f + 14;
    size_t ihl = (size_t)(ip[0] & 0xf) * 4, tot = get16be(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl || 14 + tot > len || get32be(ip + 16) != net.ip)
        return;
    if (get16be(ip + 6) & 0x3fff)
        return; /* fragments: not for us */
    uint32_t src = get32be(ip + 12);
    uint8_t *p = ip + ihl;
    size_t plen = tot - ihl;
    if (ip[9] == IP_TCP && src == MMDS_IP) {
        tcp_input(p, plen);
    } else if (ip[9] == IP_UDP && plen >= 8 && net.echo_port && get16be(p + 2) == net.echo_port) {
        size_t ulen = get16be(p + 4);
        if (ulen < 8 || ulen > plen)
            return;
        uint8_t smac[6];
        uint16_t sport = get16be(p);
        memcpy(smac, f + 6, 6);
        /* The payload is copied out of the RX buffer into the TX frame. */
        udp_send(smac, src, net.echo_port, sport, p + 8, ulen - 8);
        ln_pfx(&l, "net", net.d->index);
        ln_str(&l, "udp echo from=");
        ln_ip(&l, src);
        ln_char(&l, ':');
        ln_dec(&l, sport);
        ln_str(&l, " port=");
        ln_dec(&l, net.echo_port);
        ln_str(&l, " bytes=");
        ln_dec(&l, ulen - 8);
        ln_emit(&l);
    }
}

static void net_poll(void)
{
    uint16_t id;
    uint32_t len;
    int n = 0;
    if (!net.ready)
        return;
    while (vq_get(&net.rx, &id, &len)) {
        if (id < NET_RX_BUFS && len > NET_HDR && len <= NET_BUF)
            net_frame_in(net.rxbuf + (size_t)id * NET_BUF + NET_HDR, len - NET_HDR);
        vq_add(&net.rx, id);
        n++;
    }
    if (n)
        vq_kick(&net.rx);
}

/* Poll the network (serving ARP etc.) until *flag is set or timeout. */
static int net_wait(volatile int *flag, uint64_t timeout_ns)
{
    uint64_t deadline = now_ns() + timeout_ns;
    while (!*flag && now_ns() < deadline) {
        net_poll();
        for (int i = 0; i < 50; i++)
            cpu_relax();
    }
    return *flag;
}

/* Resolve ip (host or MMDS) with up to 5 ARP requests, 200 ms apart. */
static int arp_resolve(uint32_t ip, volatile int *ok)
{
    for (int i = 0; i < 5 && !*ok; i++) {
        arp_send(1, bcast, ip);
        net_wait(ok, 200000000ull);
    }
    return *ok;
}

static void net_start(void)
{
    struct line l = { .len = 0 };
    struct vdev *d = find_dev(ID_NET, 0);
    net.rxbuf = alloc(NET_RX_BUFS * NET_BUF, 4096);
    net.txbuf = alloc(NET_BUF, 4096);
    ln_pfx(&l, "net", 0);
    if (!d || !net.txbuf || vdev_begin(d, NET_F_MAC) || vq_setup(d, &net.rx, 0, NET_RX_BUFS) ||
        vq_setup(d, &net.tx, 1, 16)) {
        ln_str(&l, d ? "error=init" : "error=no-device");
        ln_emit(&l);
        return;
    }
    for (uint16_t i = 0; i < net.rx.num; i++) {
        vq_desc(&net.rx, i, net.rxbuf + (size_t)i * NET_BUF, NET_BUF, D_WRITE, 0);
        vq_add(&net.rx, i);
    }
    if (vdev_finish(d)) {
        ln_str(&l, "error=init");
        ln_emit(&l);
        return;
    }
    net.d = d;
    if (!net.mac_set) {
        if (d->features & NET_F_MAC) {
            for (int i = 0; i < 6; i++)
                net.mac[i] = cfg8(d, (uint32_t)i);
        } else {
            static const uint8_t dflt[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x02 };
            memcpy(net.mac, dflt, 6);
        }
    }
    net.ready = 1;
    vq_kick(&net.rx);
    ln_str(&l, "ready mac=");
    ln_mac(&l, net.mac);
    ln_str(&l, " ip=");
    ln_ip(&l, net.ip);
    ln_emit(&l);

    if (net.hello_port && net.host_ip) {
        static const char hello[] = "hello from microvm-guest\n";
        int ok = arp_resolve(net.host_ip, &net.host_mac_ok);
        if (ok)
            udp_send(net.host_mac, net.host_ip, net.hello_port, net.hello_port,
                     (const uint8_t *)hello, sizeof(hello) - 1);
        ln_pfx(&l, "net", 0);
        ln_str(&l, "udp hello to=");
        ln_ip(&l, net.host_ip);
        ln_char(&l, ':');
        ln_dec(&l, net.hello_port);
        ln_str(&l, ok ? " status=sent" : " status=no-arp");
        ln_emit(&l);
    }
}

/* -------------------------------------------------------------- MMDS */

static size_t find_str(const uint8_t *p, size_t n, const char *s)
{
    size_t k = str_len(s);
    for (size_t i = 0; i + k <= n; i++) {
        size_t j = 0;
        while (j < k && (p[i + j] | 0x20) == (s[j] | 0x20)) /* ASCII case-insensitive */
            j++;
        if (j == k)
            return i;
    }
    return (size_t)-1;
}

/*
 * One HTTP exchange with MMDS.  Returns the status code (0 if no complete
 * answer came) and the body in tcp.resp[*body, *body + *blen).
 */
static int mmds_http(const char *req, size_t req_len, size_t *body, size_t *blen)
{
    static uint16_t conn;
    *body = *blen = 0;
    if (!net.mmds_mac_ok && !arp_resolve(MMDS_IP, &net.mmds_mac_ok))
        return 0;
    tcp.fin = 0;
    tcp.rlen = 0;
    tcp.rcv_nxt = 0;
    tcp.lport = (uint16_t)(40000 + conn);
    tcp.snd_nxt = 0x10000000u + 0x1000000u * conn;
    conn++;
    tcp.state = T_SYN_SENT;
    for (int i = 0; i < 3 && tcp.state == T_SYN_SENT; i++) {
        if (i)
            tcp.snd_nxt--; /* retransmit the same SYN */
        tcp_send(TCP_SYN, NULL, 0);
        uint64_t deadline = now_ns() + 500000000ull;
        while (tcp.state == T_SYN_SENT && now_ns() < deadline)
            net_poll();
    }
    if (tcp.state != T_OPEN)
        return 0;
    tcp_send(TCP_PSH | TCP_ACK, (const uint8_t *)req, req_len);
    int status = 0;
    uint64_t deadline = now_ns() + 2000000000ull;
    while (now_ns() < deadline) {
        net_poll();
        size_t h = find_str(tcp.resp, tcp.rlen, "\r\n\r\n");
        if (h != (size_t)-1 && h >= 12 && mem_eq(tcp.resp, "HTTP/1.", 7)) {
            const char *sp = (const char *)tcp.resp + 9;
            uint64_t code = 0;
            parse_num(&sp, sp + 3, &code);
            status = (int)code;
            size_t cl = find_str(tcp.resp, h, "\r\nContent-Length:");
            size_t want = 0;
            if (cl != (size_t)-1) {
                const char *p = (const char *)tcp.resp + cl + 17, *end = (const char *)tcp.resp + h;
                uint64_t v = 0;
                while (p < end && *p == ' ')
                    p++;
                parse_num(&p, end, &v);
                want = (size_t)v;
            }
            *body = h + 4;
            *blen = tcp.rlen - *body;
            if (*blen >= want || tcp.rlen == MMDS_RESP_MAX || tcp.fin)
                break;
        }
        if (tcp.fin)
            break;
    }
    if (tcp.state == T_OPEN)
        tcp_send(TCP_RST | TCP_ACK, NULL, 0);
    tcp.state = T_CLOSED;
    return status;
}

static void mmds_line(const char *ver, const char *what, const char *path, size_t plen, int status,
                      size_t body, size_t blen, int print_body)
{
    struct line l = { .len = 0 };
    ln_pfx(&l, "mmds", -1);
    ln_str(&l, ver);
    ln_char(&l, ' ');
    ln_str(&l, what);
    if (path) {
        ln_char(&l, ' ');
        ln_escaped(&l, (const uint8_t *)path, plen, 100);
    }
    ln_str(&l, " status=");
    ln_dec(&l, (uint64_t)status);
    ln_str(&l, " bytes=");
    ln_dec(&l, blen);
    if (print_body) {
        ln_str(&l, " body=");
        ln_escaped(&l, tcp.resp + body, blen, 160);
    }
    ln_emit(&l);
}

/* "v1:/path" (plain GET) or "v2:/path" (token PUT, then GET with the token). */
static void mmds_run(const char *v, size_t n)
{
    static char req[512];
    static char token[128];
    struct line r = { .len = 0 };
    int v2 = n > 3 && mem_eq(v, "v2:", 3);
    if (n < 4 || !(v2 || mem_eq(v, "v1:", 3)) || n - 3 > 200) {
        mmds_line("v?", "error=bad-arg", v, n, 0, 0, 0, 0);
        return;
    }
    const char *path = v + 3;
    size_t plen = n - 3, body, blen;
    if (!net.ready) {
        mmds_line(v2 ? "v2" : "v1", "GET", path, plen, 0, 0, 0, 0);
        return;
    }
    size_t tlen = 0;
    if (v2) {
        ln_str(&r, "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                   "X-metadata-token-ttl-seconds: 60\r\n\r\n");
        int st = mmds_http(r.buf, r.len, &body, &blen);
        mmds_line("v2", "token", NULL, 0, st, body, blen, st != 200); /* the token stays secret */
        if (st != 200)
            return;
        tlen = blen < sizeof(token) ? blen : sizeof(token);
        memcpy(token, tcp.resp + body, tlen);
    }
    size_t q = 0;
    const char *parts[] = { "GET ", NULL, " HTTP/1.1\r\nHost: 169.254.169.254\r\n" };
    for (int i = 0; i < 3; i++) {
        const char *s = parts[i] ? parts[i] : path;
        size_t k = parts[i] ? str_len(s) : plen;
        memcpy(req + q, s, k);
        q += k;
    }
    if (v2) {
        memcpy(req + q, "X-metadata-token: ", 18);
        q += 18;
        memcpy(req + q, token, tlen);
        q += tlen;
        memcpy(req + q, "\r\n", 2);
        q += 2;
    }
    memcpy(req + q, "\r\n", 2);
    q += 2;
    int st = mmds_http(req, q, &body, &blen);
    mmds_line(v2 ? "v2" : "v1", "GET", path, plen, st, body, blen, 1);
}

/* ----------------------------------------------------------- balloon */

#define BAL_F_STATS_VQ (1u << 1)
#define BAL_F_DEFLATE_ON_OOM (1u << 2)
#define BAL_BATCH 256 /* Firecracker takes at most 256 PFNs per descriptor */
enum { BS_MEMFREE = 4, BS_MEMTOT = 5, BS_AVAIL = 6 };

struct bal_stat {
    uint16_t tag;
    uint64_t val;
} __attribute__((packed));

extern char __guest_end[]; /* link.ld */

static struct {
    struct vdev *d;
    struct vq infl, defl, stats;
    int ready, has_stats;
    uint32_t actual, last_target;
    uint64_t pfn_top, max_pages, mem_bytes;
    uint32_t *pfns;
    struct bal_stat *st;
    uint64_t stats_sent;
} bal;

/* RAM from the e820 map in the zero page: highest usable region. */
static void bal_memory(void)
{
    uint64_t floor = ((uint64_t)(uintptr_t)__guest_end + 4095) >> 12;
    if (!boot_params_addr)
        return;
    uint8_t n = *(volatile uint8_t *)(uintptr_t)(boot_params_addr + 0x1e8);
    for (int i = 0; i < n && i < 128; i++) {
        const uint8_t *e = (const uint8_t *)(uintptr_t)(boot_params_addr + 0x2d0 + 20u * (unsigned)i);
        uint64_t addr, size;
        uint32_t type;
        memcpy(&addr, e, 8);
        memcpy(&size, e + 8, 8);
        memcpy(&type, e + 16, 4);
        if (type != 1)
            continue;
        bal.mem_bytes += size;
        uint64_t top = (addr + size) >> 12, bottom = addr >> 12;
        if (top > bal.pfn_top) {
            bal.pfn_top = top;
            bal.max_pages = top > floor ? top - (bottom > floor ? bottom : floor) : 0;
        }
    }
}

/* Balloon page k (0 = first inflated) is the k-th page from the top of RAM. */
static void bal_move(struct vq *q, uint32_t first, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        bal.pfns[i] = (uint32_t)(bal.pfn_top - 1 - (first + i));
    vq_desc(q, 0, bal.pfns, count * 4, 0, 0);
    vq_run(q, 0, NULL, 2000000000ull);
}

static void bal_fill_stats(void)
{
    /* Everything below the end of the image counts as used, plus the balloon. */
    uint64_t used = (uint64_t)(uintptr_t)__guest_end + (uint64_t)bal.actual * 4096;
    uint64_t free = bal.mem_bytes > used ? bal.mem_bytes - used : 0;
    bal.st[0] = (struct bal_stat){ BS_MEMTOT, bal.mem_bytes };
    bal.st[1] = (struct bal_stat){ BS_MEMFREE, free };
    bal.st[2] = (struct bal_stat){ BS_AVAIL, free };
    vq_desc(&bal.stats, 0, bal.st, 3 * sizeof(struct bal_stat), 0, 0);
    vq_add(&bal.stats, 0);
    vq_kick(&bal.stats);
}

static void bal_poll(void)
{
    struct line l = { .len = 0 };
    uint16_t id;
    uint32_t len;
    if (!bal.ready)
        return;
    uint32_t target = cfg32(bal.d, 0);
    if (target != bal.last_target) {
        uint32_t want = target > bal.max_pages ? (uint32_t)bal.max_pages : target;
        while (bal.actual < want) {
            uint32_t n = want - bal.actual > BAL_BATCH ? BAL_BATCH : want - bal.actual;
            bal_move(&bal.infl, bal.actual, n);
            bal.actual += n;
        }
        while (bal.actual > want) {
            uint32_t n = bal.actual - want > BAL_BATCH ? BAL_BATCH : bal.actual - want;
            bal_move(&bal.defl, bal.actual - n, n);
            bal.actual -= n;
        }
        mw(bal.d, R_CONFIG + 4, bal.actual);
        bal.last_target = target;
        ln_pfx(&l, "balloon", -1);
        ln_str(&l, "target=");
        ln_dec(&l, target);
        ln_str(&l, " actual=");
        ln_dec(&l, bal.actual);
        ln_emit(&l);
    }
    if (bal.has_stats && vq_get(&bal.stats, &id, &len)) {
        /* The device handed the buffer back: it wants fresh statistics. */
        bal_fill_stats();
        ln_pfx(&l, "balloon", -1);
        ln_str(&l, "stats n=");
        ln_dec(&l, ++bal.stats_sent);
        ln_emit(&l);
    }
}

static void bal_start(void)
{
    struct line l = { .len = 0 };
    struct vdev *d = find_dev(ID_BALLOON, 0);
    bal.pfns = alloc(BAL_BATCH * 4, 4096);
    bal.st = alloc(8 * sizeof(struct bal_stat), 16);
    ln_pfx(&l, "balloon", -1);
    int err = !d || !bal.st || vdev_begin(d, BAL_F_STATS_VQ | BAL_F_DEFLATE_ON_OOM);
    if (!err) {
        /* Every queue must be valid, the stats queue exactly when offered. */
        bal.has_stats = (d->features & BAL_F_STATS_VQ) != 0;
        err = vq_setup(d, &bal.infl, 0, 16) || vq_setup(d, &bal.defl, 1, 16) ||
              (bal.has_stats && vq_setup(d, &bal.stats, 2, 4)) || vdev_finish(d);
    }
    if (err) {
        ln_str(&l, d ? "error=init" : "error=no-device");
        ln_emit(&l);
        return;
    }
    bal.d = d;
    bal_memory();
    ln_str(&l, "ready stats=");
    ln_dec(&l, (uint64_t)bal.has_stats);
    ln_str(&l, " deflate_on_oom=");
    ln_dec(&l, d->features & BAL_F_DEFLATE_ON_OOM ? 1 : 0);
    ln_str(&l, " max_pages=");
    ln_dec(&l, bal.max_pages);
    ln_emit(&l);
    bal.ready = 1;
    bal.last_target = (uint32_t)-1;
    if (bal.has_stats)
        bal_fill_stats(); /* first statistics at once */
    bal_poll();
}

/* ------------------------------------------------------ command line */

struct arg {
    const char *v; /* points into the command line (stays in guest memory) */
    size_t n;
};

#define MAX_ARGS 8
static struct {
    struct arg blk[MAX_ARGS];
    int nblk;
    uint64_t rng;
    int vsock;
    int net;
    int balloon;
    struct arg mmds[MAX_ARGS];
    int nmmds;
    int any;
} args;

int dev_arg(const char *tok, size_t len)
{
    const char *v;
    size_t n;
    if ((v = match_key(tok, len, "virtio_mmio.device=", &n))) {
        add_mmio_token(v, n);
        return 1;
    }
    if ((v = match_key(tok, len, "microvm.blk=", &n))) {
        if (args.nblk < MAX_ARGS)
            args.blk[args.nblk++] = (struct arg){ v, n };
    } else if ((v = match_key(tok, len, "microvm.vsock.listen=", &n)) ||
               (v = match_key(tok, len, "microvm.vsock.connect=", &n))) {
        const char *p = v;
        uint64_t port;
        if (!parse_num(&p, v + n, &port) || p != v + n || port > 0xffffffffull)
            return 0;
        if (tok[14] == 'l' && vs.nlisten < VS_MAX_PORTS)
            vs.listen[vs.nlisten++] = (uint32_t)port;
        else if (tok[14] == 'c' && vs.nconnect < VS_MAX_PORTS)
            vs.connect[vs.nconnect++] = (uint32_t)port;
        args.vsock = 1;
    } else if ((v = match_key(tok, len, "microvm.net.ip=", &n))) {
        if (!parse_ip(v, n, &net.ip))
            return 0;
        args.net = 1;
    } else if ((v = match_key(tok, len, "microvm.net.host=", &n))) {
        if (!parse_ip(v, n, &net.host_ip))
            return 0;
        args.net = 1;
    } else if ((v = match_key(tok, len, "microvm.net.mac=", &n))) {
        if (!parse_mac(v, n, net.mac))
            return 0;
        net.mac_set = 1;
        args.net = 1;
    } else if ((v = match_key(tok, len, "microvm.net.echo=", &n)) ||
               (v = match_key(tok, len, "microvm.net.hello=", &n))) {
        const char *p = v;
        uint64_t port;
        if (!parse_num(&p, v + n, &port) || p != v + n || port < 1 || port > 65535)
            return 0;
        if (tok[12] == 'e')
            net.echo_port = (uint16_t)port;
        else
            net.hello_port = (uint16_t)port;
        args.net = 1;
    } else if ((v = match_key(tok, len, "microvm.mmds=", &n))) {
        if (args.nmmds < MAX_ARGS)
            args.mmds[args.nmmds++] = (struct arg){ v, n };
        args.net = 1;
    } else if ((v = match_key(tok, len, "microvm.balloon=", &n))) {
        if (!val_is_n(v, n, "on"))
            return 0;
        args.balloon = 1;
    } else if ((v = match_key(tok, len, "microvm.rng=", &n))) {
        const char *p = v;
        if (!parse_num(&p, v + n, &args.rng) || p != v + n)
            return 0;
    } else {
        return 0;
    }
    args.any = 1;
    return 1;
}

int dev_configured(void) { return args.any; }

void dev_start(int serve)
{
    (void)serve;
    probe_devices();
    for (int i = 0; i < args.nblk; i++)
        blk_run(args.blk[i].v, args.blk[i].n);
    if (args.rng)
        rng_run(args.rng);
    if (args.balloon && serve)
        bal_start();
    if (args.vsock && serve)
        vs_start();
    if (args.net) {
        net_start();
        for (int i = 0; i < args.nmmds; i++)
            mmds_run(args.mmds[i].v, args.mmds[i].n);
    }
}

void dev_poll(void)
{
    vs_poll();
    net_poll();
    bal_poll();
}
