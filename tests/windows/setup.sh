# Sourced by tests/windows-smoke.sh and tests/windows-service.sh (from the repository root).
# Skips the caller (exit 0) without Wine or MinGW; cross-builds keel-agent.exe; prepares $work with the
# .exe and the ProcessPrng stand-in DLL (Wine 8 lacks bcryptprimitives.dll, which Rust's std imports),
# and a private WINEPREFIX whose processes (services.exe, the agent) are ended on exit, this prefix only.
WINE=${WINE:-/usr/lib/wine/wine64}
[ -x "$WINE" ] || WINE=$(command -v wine64 || true)
if [ -z "$WINE" ]; then echo "skipped: wine64 not installed"; exit 0; fi
command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "skipped: MinGW not installed"; exit 0; }

# Its own target directory: tests/run starts this build in the background while the native tests
# run, and cargo locks a whole target directory while it builds. Here it is a no-op once that build
# is done (or waits for it).
target_dir=${CARGO_TARGET_DIR:-target}/windows
CARGO_TARGET_DIR=$target_dir cargo build -q --locked -p keel-agent --target x86_64-pc-windows-gnu
work=$(mktemp -d /tmp/keel-wine.XXXXXX)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
trap 'wineserver -k 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$target_dir/x86_64-pc-windows-gnu/debug/keel-agent.exe" "$work/"
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bcryptprimitives.dll" tests/windows/processprng.c -ladvapi32

# `free_port VAR` sets VAR to a free loopback port not handed out before in this run: two bind(0) in
# a row may return the same port. (A variable, not $(...): a subshell would forget what it handed out.)
handed_out=" "
free_port() {
    local p
    for _ in $(seq 50); do
        p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        case "$handed_out" in *" $p "*) continue ;; esac
        handed_out="$handed_out$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    echo "no free loopback port" >&2
    return 1
}
