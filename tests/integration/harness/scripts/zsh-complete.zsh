# zsh -f zsh-complete.zsh FPATH_DIR PATH_DIR 'COMMAND LINE': types the command line into an
# interactive zsh on a pseudo-terminal (zsh/zpty), presses Tab twice and prints what the
# terminal showed (the completed line and the candidate list, with escape sequences).
# Used by test_cli.py to exercise the generated _meshlane for real.
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' ; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D; unsetopt automenu; LISTMAX=0; export PATH=$2:\$PATH"
zpty -w z "echo READY"
zpty -r -m z out '*READY*'
zpty -w -n z "$3"$'\t'$'\t'
sleep 2
out=""
while zpty -r -t z chunk; do out+=$chunk; done
print -r -- "$out"
zpty -d z
