/* bcryptprimitives.dll stand-in for Wine 8, which lacks it: Rust's std on Windows imports
 * ProcessPrng from it. Implemented over RtlGenRandom (advapi32!SystemFunction036), which Wine has.
 * Built by tests/windows-smoke.sh with MinGW and placed next to keel-agent.exe; never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
