# What zsh's completion system offers after a command line, one candidate per line:
#   zsh -f tests/tools/zsh_complete.zsh FPATH_DIR 'sessiond run --con'
# It starts an interactive zsh in a pseudo-terminal (zpty), with FPATH_DIR first in $fpath
# and compinit loaded, types the words and a Tab, and prints what the completion functions
# hand to compadd (wrapped to print them). The inner shell exits after that one completion.
zmodload zsh/zpty || exit 3
fdir=$1
shift
init=$(mktemp)
trap 'rm -f $init' EXIT
cat >$init <<INIT
PROMPT=
fpath=($fdir \$fpath)
autoload -Uz compinit
compinit -u -D
bindkey '^I' complete-word
comppostfuncs=( exit )
zstyle ':completion:*' insert-tab false
compadd () {
    # -O/-A/-D only fill arrays (used by _describe and friends): pass them through.
    if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "\$@"
        return \$?
    fi
    local -a hits
    builtin compadd -A hits "\$@"
    local h
    for h in \$hits; do print -r -- "CANDIDATE:\$h"; done
}
print ready
INIT
zpty shell zsh -f -i
zpty -w shell "source $init"
repeat 20; do
  zpty -r shell line || exit 4
  [[ $line == ready* ]] && break
done
zpty -w -n shell "$*"$'\t'
while zpty -r shell line; do
  # (the first one shares its line with the echo of the typed words)
  [[ $line == *CANDIDATE:* ]] && print -r -- ${${line##*CANDIDATE:}%%$'\r'*}
done
exit 0
