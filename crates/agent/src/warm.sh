# The agent's warm shell (see warm.rs). $1: the agent's pid. Each line on stdin names three
# of the agent's fds, "OUT ERR GO": the shell forks the next command's subshell at once; the
# subshell opens them, says "O <pid>", reads its command from GO until EOF and evals it. When
# it has ended the shell says "X <pid> <status>". (Not from an EXIT trap in the subshell: bash
# runs it on a fatal signal with the last command's status in `$?`, not 128+signal.)
# Job control is on only for the fork, which gives the subshell its own process group; on
# during `wait`, a stopped subshell would end the wait. No traps: a trapped signal interrupts
# `wait` too. A command's `kill $$` ends this shell; the agent starts another.
a=$1
while read -r o e g; do
  set -m
  (
    set +m
    exec </dev/null 2>"/proc/$a/fd/$e" 5<"/proc/$a/fd/$g" 6>"/proc/$a/fd/$o"
    echo "O $BASHPID"
    exec >&6 6>&-
    IFS= read -r -N 1073741823 -u 5 c
    exec 5<&-
    eval "$c"
  ) &
  set +m
  p=$!
  wait "$p"
  echo "X $p $?"
done
