# The agent's warm shell (see warm.rs). $1: the agent's pid. Each line on stdin names three
# of the agent's fds, "OUT ERR GO": the shell forks the next command's subshell at once; the
# subshell opens them, says "O <pid>", reads its command from GO until EOF and evals it. Its
# EXIT trap closes the command's output and says "E <pid> <status>" before the process is torn
# down (unless the command set its own EXIT trap); when it has ended the shell says
# "X <pid> <status>" too.
# Job control is on only for the fork, which gives the subshell its own process group; on
# during `wait`, a stopped subshell would end the wait. No traps: a trapped signal interrupts
# `wait` too. A command's `kill $$` ends this shell; the agent starts another.
a=$1
while read -r o e g; do
  set -m
  (
    set +m
    exec </dev/null 2>"/proc/$a/fd/$e" 5<"/proc/$a/fd/$g" 6>"/proc/$a/fd/$o" 7>&1
    echo "O $BASHPID"
    exec >&6 6>&-
    IFS= read -r -N 1073741823 -u 5 c
    exec 5<&-
    trap 's=$?; exec >&- 2>&-; echo "E $BASHPID $s" >&7' EXIT
    eval "$c"
  ) &
  set +m
  p=$!
  wait "$p"
  echo "X $p $?"
done
