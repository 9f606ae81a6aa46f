# Shared by the benchmark scripts (sourced). The caller defines
# `has_tool NAME` (whether NAME is among the tools to run) and `log MSG`.

# Installs restic, Borg (those the run uses) and GNU time from Debian's
# packages when they are missing, and warns about a restic older than 0.14,
# which does not compress (repository format v2 is the default from 0.14).
ensure_peers() {
    local missing=() sudo="" rv
    if has_tool restic && ! command -v restic >/dev/null; then missing+=(restic); fi
    if has_tool borg && ! command -v borg >/dev/null; then missing+=(borgbackup); fi
    [[ -x /usr/bin/time ]] || missing+=(time)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        [[ $(id -u) == 0 ]] || sudo="sudo"
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if has_tool restic; then
        rv=$(restic version | awk '{print $2}')
        if [[ "$(printf '%s\n' 0.14.0 "$rv" | sort -V | head -n 1)" != 0.14.0 ]]; then
            log "warning: restic $rv is older than 0.14: no compression, comparison is skewed"
        fi
    fi
}
