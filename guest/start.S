/*
 * Entry point of the microvm test guest.
 *
 * Firecracker jumps to e_entry in 64-bit long mode, interrupts off, with the
 * first 1 GiB identity-mapped and RSI = guest-physical address of the Linux
 * boot_params ("zero page").  We set up our own stack and call guest_main().
 */
    .section .text.entry, "ax"
    .globl _start
    .code64
_start:
    cli
    cld
    lea     stack_top(%rip), %rsp
    xor     %ebp, %ebp
    mov     %rsi, %rdi              /* guest_main(boot_params) */
    call    guest_main
    /* guest_main never returns; if it does, stop quietly. */
1:  cli
    hlt
    jmp     1b

/*
 * Local APIC timer interrupt: count the tick, signal end-of-interrupt
 * through the x2APIC EOI register (MSR 0x80b) and return.  The main loop
 * only needs the wake-up from `hlt`.
 */
    .text
    .globl  isr_apic_timer
isr_apic_timer:
    push    %rax
    push    %rcx
    push    %rdx
    incq    apic_ticks(%rip)
    mov     $0x80b, %ecx
    xor     %eax, %eax
    xor     %edx, %edx
    wrmsr
    pop     %rdx
    pop     %rcx
    pop     %rax
    iretq

/* Spurious APIC interrupt: no EOI. */
    .globl  isr_spurious
isr_spurious:
    iretq

    .bss
    .balign 16
stack_bottom:
    .skip   16384
stack_top:

    .section .note.GNU-stack, "", @progbits
