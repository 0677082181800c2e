# The cache protocol of the hack/*/build.sh scripts that build a pinned tool
# (containerd2, crio, critest, kubelet, runc, criu). Sourced, not run:
#
#   source "$here/../lib/cached-build.sh"
#   cached_build OUT ANSWERS BUILD [SHOW]
#
# OUT is the cached file or directory of binaries; ANSWERS a command that
# succeeds when OUT is there and answers the pinned version; BUILD a command
# called (in a subshell) with one argument, the path it builds to: a file,
# or a directory whose files go into OUT; the directory that path is in is
# its scratch space. SHOW, when given, prints what OUT answers, for the
# error when the built OUT does not answer.
#
# When OUT answers nothing is built. Otherwise the caller takes the lock
# OUT.lock (flock: concurrent callers wait for each other), asks again
# (another caller may have built it meanwhile), builds into a temp dir
# beside OUT (removed whatever happens), moves the result into place only
# once it is complete, and checks that it answers. cached_build prints
# nothing on stdout: what a script prints there is its own.

# Its locals are prefixed: the callbacks see the caller's variables.
cached_build() {
  local _cb_out="$1" _cb_answers="$2" _cb_build="$3" _cb_show="${4:-}"
  if "$_cb_answers"; then
    return 0
  fi
  mkdir -p "$(dirname "$_cb_out")"
  exec 9>"$_cb_out.lock"
  flock 9
  if "$_cb_answers"; then # built by another caller while we waited
    exec 9>&-
    return 0
  fi
  local _cb_tmp _cb_start=$SECONDS
  _cb_tmp="$(mktemp -d "$(dirname "$_cb_out")/.$(basename "$_cb_out").build.XXXXXX")"
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -rf '$_cb_tmp'" EXIT
  ("$_cb_build" "$_cb_tmp/out")
  if [[ -d "$_cb_tmp/out" ]]; then
    mkdir -p "$_cb_out"
    mv -f "$_cb_tmp/out"/* "$_cb_out/"
  else
    mv -f "$_cb_tmp/out" "$_cb_out"
  fi
  rm -rf "$_cb_tmp"
  trap - EXIT
  echo "build.sh: built $_cb_out in $((SECONDS - _cb_start))s" >&2
  if ! "$_cb_answers"; then
    echo "build.sh: $_cb_out does not answer the pinned version; it says:" >&2
    if [[ -n "$_cb_show" ]]; then
      "$_cb_show" >&2 || true
    fi
    exit 1
  fi
  exec 9>&-
}

# pinned_version MODULE DIR prints the version DIR/go.mod requires MODULE at
# ("require MODULE vX.Y.Z" or a line of a require block); none: it says so
# and fails.
pinned_version() {
  local v
  v="$(awk '$1 == "require" { $1 = "" ; $0 = $0 } $1 == "'"$1"'" { print $2; exit }' "$2/go.mod")"
  if [[ -z "$v" ]]; then
    echo "build.sh: no 'require $1 vX.Y.Z' line in $2/go.mod" >&2
    return 1
  fi
  echo "$v"
}

# go_build_env CGO_ENABLED sets the environment of the Go builds: the
# machine's Go toolchain and the modules go.mod pins, nothing else.
go_build_env() {
  export PATH="/usr/local/go/bin:$PATH"
  export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED="$1"
  export GOFLAGS="-mod=readonly -buildvcs=false"
}
