/*
 * For the Windows tests under Wine only. Since Rust 1.78 the standard
 * library takes random numbers from ProcessPrng in bcryptprimitives.dll,
 * which every Windows since 10 has but Wine only since 8.13: Debian 12's
 * Wine 8.0 cannot start a Rust program without it. This stand-in fills the
 * buffer from RtlGenRandom, Wine's system random source. .ci/run builds it
 * with zig into the Wine prefix that the tests run in; nothing ships with it.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
