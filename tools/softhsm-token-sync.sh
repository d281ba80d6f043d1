#!/bin/sh
# softhsm-token-sync — give another kmsd instance's SoftHSM token the keys of
# this one (docs/ha.md, "The same master key in every token"):
#
#   softhsm-token-sync.sh SRC_TOKENDIR DST_TOKENDIR
#
# SRC_TOKENDIR and DST_TOKENDIR are SoftHSM `directories.tokendir` values
# (the directory holding one subdirectory per token). DST may be in use by
# a running kmsd: every file is copied to a temporary name beside its
# destination and renamed into place, so the running SoftHSM never reads a
# half-written object; it picks up new objects without a restart. Objects
# are encrypted under the token's own key (its PIN protects them): the
# files carry no plaintext key, but copy them only over an authenticated,
# encrypted channel (ssh, or this script on a mounted volume) and keep them
# like the token itself (mode 0600, the copy's owner the kmsd user).
#
# Files in DST that SRC lacks are left alone: a key destroyed in SRC is
# destroyed in every other token by its own kmsd (the database says which),
# never by deleting files under a running SoftHSM.
#
# For another host: run it there on a copy fetched with `rsync -a` (which
# itself renames into place) or `scp -rp` into a staging directory.
set -eu

die() { echo "softhsm-token-sync: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 SRC_TOKENDIR DST_TOKENDIR"
src=$1
dst=$2
[ -d "$src" ] || die "no directory $src"
[ -d "$dst" ] || die "no directory $dst (create it, or copy the whole token at provisioning)"
[ "$(cd "$src" && pwd -P)" != "$(cd "$dst" && pwd -P)" ] || die "$src and $dst are the same directory"
umask 077

n=0
# One token per subdirectory; the files of each are its objects and its
# token.object (label, PINs' wrapped key).
for tok in "$src"/*/; do
    [ -d "$tok" ] || continue
    name=$(basename "$tok")
    mkdir -p "$dst/$name"
    for f in "$tok"*; do
        [ -f "$f" ] || continue
        base=$(basename "$f")
        case "$base" in
        *.lock)
            # A lock file is locked by inode: one a running SoftHSM holds
            # must never be replaced; a new object's is made empty.
            [ -e "$dst/$name/$base" ] || : > "$dst/$name/$base"
            continue ;;
        esac
        # Unchanged files are not rewritten (SoftHSM re-reads what changed).
        if [ -f "$dst/$name/$base" ] && cmp -s "$f" "$dst/$name/$base"; then
            continue
        fi
        cp -p "$f" "$dst/$name/.$base.sync"
        mv -f "$dst/$name/.$base.sync" "$dst/$name/$base"
        n=$((n + 1))
    done
done
echo "softhsm-token-sync: $n file(s) copied to $dst" >&2
