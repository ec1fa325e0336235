#!/usr/bin/env bash
# Build the llama.cpp binaries AI Server runs, from the llama.cpp tree vendored in a pinned
# llama-cpp-python source distribution on PyPI (MIT), into DEST/bin. Run through
# `deploy/setup.py llama`, which owns the version pin and the cache location.
#
#   deploy/build-llama.sh VERSION DEST
set -euo pipefail

version="$1"
dest="$2"
# ggml-rpc-server: llama.cpp's RPC worker (`ai-server worker --rpc`), installed as rpc-server,
# its name in upstream's docs; llama-tokenize counts tokens in cli mode.
targets=(llama-server llama-cli llama-completion llama-mtmd-cli llama-embedding llama-tokenize
    ggml-rpc-server)
python="${PYTHON:-python3}"

# LLAMA_USE_PREBUILT_UI=OFF: the default fetches a web UI from the internet at build time.
# GGML_NATIVE=OFF: -march=native enables AMX on these Xeons, whose kernels die with SIGILL here
#   (the sandbox grants no AMX tile state); the portable build uses AVX2/FMA/F16C.
# GGML_RPC=ON: the ggml-rpc-server target and llama-server's --rpc flag (layers on other hosts).
# RPATH $ORIGIN: the binaries find their shared libs beside them wherever the directory is
#   moved; the default RUNPATH names the (deleted) build directory.
flags=(
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_RPC=ON
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN'
)
stamp="$version ${flags[*]} ${targets[*]}"

# The stamp records what was built: a cache built with other flags is rebuilt.
if [[ -f "$dest/bin/.complete" && "$(cat "$dest/bin/.complete")" == "$stamp" ]]; then
    echo "llama.cpp $version: cached in $dest/bin"
    exit 0
fi

missing=()
command -v cmake >/dev/null || missing+=("cmake (apt-get install cmake)")
command -v c++ >/dev/null || command -v g++ >/dev/null || missing+=("a C++ compiler (apt-get install g++)")
command -v make >/dev/null || missing+=("make (apt-get install make)")
if ((${#missing[@]})); then
    echo "error: building llama.cpp needs: ${missing[*]}" >&2
    exit 1
fi

work="$dest.building"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

echo "llama.cpp $version: fetching the llama-cpp-python sdist from PyPI"
"$python" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"

echo "llama.cpp $version: configuring"
cmake -S "$src" -B "$work/build" "${flags[@]}" >"$work/configure.log" 2>&1 ||
    { tail -n 40 "$work/configure.log" >&2; exit 1; }

jobs="${JOBS:-$(nproc)}"
echo "llama.cpp $version: compiling ${targets[*]} with $jobs jobs (about 11 minutes on 2 cores)"
start=$SECONDS
# The full compiler output goes to a log; the terminal gets a line per percent step (and at
# least every 30 s) with the elapsed time and the file, so an 11 minute build never looks hung.
show_progress() {
    local line pct last=-1 shown=$SECONDS
    while IFS= read -r line; do
        printf '%s\n' "$line" >>"$work/build.log"
        [[ $line =~ ^\[\ *([0-9]+)%\]\ (Building|Linking).*\ ([^ ]+)$ ]] || continue
        pct=${BASH_REMATCH[1]}
        if ((pct != last || SECONDS - shown >= 30)); then
            printf '  [%3d%%] %4ds  %s\n' "$pct" "$((SECONDS - start))" "${BASH_REMATCH[3]##*/}"
            last=$pct shown=$SECONDS
        fi
    done
}
set +e
cmake --build "$work/build" -j "$jobs" --target "${targets[@]}" 2>&1 | show_progress
status=${PIPESTATUS[0]}
set -e
if ((status != 0)); then
    grep -m 20 -E 'error|Error' "$work/build.log" >&2 || tail -n 40 "$work/build.log" >&2
    echo "error: llama.cpp build failed (exit $status)" >&2
    exit "$status"
fi

# The binaries find libllama.so / libggml*.so beside them through their RPATH: copy them together,
# then move the finished directory into place so a half-written cache is never used.
stage="$work/bin"
mkdir -p "$stage"
cp -a "$work"/build/bin/. "$stage"/
for t in "${targets[@]}"; do
    # Run each from elsewhere: proves it was built and finds its libraries in its own directory.
    # (the rpc server has no --version; its --help exits 0.)
    probe=--version
    [[ $t == ggml-rpc-server ]] && probe=--help
    (cd / && "$stage/$t" "$probe" >/dev/null 2>&1) || { echo "error: $t does not run" >&2; exit 1; }
done
ln -sf ggml-rpc-server "$stage/rpc-server"
echo "$stamp" >"$stage/.complete"
rm -rf "$dest"
mkdir -p "$dest"
mv "$stage" "$dest/bin"
echo "llama.cpp $version: built in $((SECONDS - start))s -> $dest/bin"
