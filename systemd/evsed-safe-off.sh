#!/bin/sh
# evsed: the ExecStopPost of evsed.service (as the service user): the outputs safe after any
# exit of `evsed run`. `evsed install` copies it to /usr/local/lib/evsed/safe-off.sh.
# See systemd/README.md (the unit: ExecStopPost).
#
#   safe-off.sh VENV... -- SAFE-OFF ARGUMENTS
#
# Tries each venv in turn (the unit names /opt/evsed/current, root's copy in
# /usr/local/lib/evsed/admin, /opt/evsed/previous) until one drove every output safe: the
# version that just ended may be a firmware update that cannot even be imported, and then
# its safe-off could not run either. Each try is the minimal entry point
# (evsed.controller.safeoff: the pins of the configuration, gpiozero, nothing of OCPP or
# the store), or `evsed safe-off` of a version from before it. Per try, the exit status
# says what happened:
#   0  every output driven safe: done, exit 0
#   1  it ran, and could not drive every output: the next copy tries again
#   2  it could not read the configuration (as that version reads it) and found no record
#      of the outputs `evsed run` started with ($RUNTIME_DIRECTORY/outputs.json): it drove
#      nothing; the next copy
#   3  it could not run at all (an import failed, no python): the next copy
#   4  it drove the outputs, and a contactor still reads closed after its relay was driven
#      off (welded?), or its feedback input could not be read then (contacts unknown): the
#      next copy too (it may drive an output this one could not), but the weld stands,
#      whatever that copy says (one from before the weld check says 0 without reading)
# Exit 1 when no copy made every output safe, or one found a contactor welded:
# `systemctl status evsed` shows the failed ExecStopPost, and the journal names each
# output and each copy.
set -u
venvs=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    venvs="$venvs $1"
    shift
done
[ $# -gt 0 ] && shift # the --

# -I: no PYTHONPATH, no user site, not the working directory: only the venv's own code.
program='import sys
try:
    from evsed.controller.safeoff import main
except ModuleNotFoundError as exc:
    if exc.name != "evsed.controller.safeoff":
        print(f"evsed safe-off: cannot import evsed in {sys.prefix}: {exc!r}", file=sys.stderr)
        sys.exit(3)
    try:  # a version from before the minimal entry point
        from evsed.controller.cli import main as cli
    except BaseException as exc:
        print(f"evsed safe-off: cannot import evsed in {sys.prefix}: {exc!r}", file=sys.stderr)
        sys.exit(3)
    sys.exit(cli(["safe-off", *sys.argv[1:]]))
except BaseException as exc:
    print(f"evsed safe-off: cannot import evsed in {sys.prefix}: {exc!r}", file=sys.stderr)
    sys.exit(3)
sys.exit(main(sys.argv[1:]))'

tried=""
welded="" # the copies that found a contactor still closed
for venv in $venvs; do
    python="$venv/bin/python"
    if [ ! -x "$python" ]; then
        echo "evsed safe-off: $python missing: cannot run from $venv" >&2
        tried="$tried $venv(3)"
        continue
    fi
    "$python" -I -c "$program" "$@"
    status=$?
    if [ "$status" = 0 ] && [ -n "$welded" ]; then
        tried="$tried $venv(0)" # its outputs driven; the weld stands (it may not check)
        break
    fi
    if [ "$status" = 0 ]; then
        [ -n "$tried" ] && echo "evsed safe-off: safe, by $venv (after$tried)"
        exit 0
    fi
    case "$status" in
        1) why="could not drive every output" ;;
        2) why="could not read the configuration and found no record of the outputs: drove nothing" ;;
        4)
            why="found a contactor still closed after opening (welded?), or could not read whether it opened"
            welded="$welded $venv"
            ;;
        *) why="could not run (exit status $status)" ;;
    esac
    echo "evsed safe-off: $venv $why; trying the next copy" >&2
    tried="$tried $venv($status)"
done
if [ -n "$welded" ]; then
    echo "evsed safe-off: NOT SAFE: a contactor still reads closed after its relay was driven off, or whether it opened is unknown (welded?, found by$welded; tried$tried): switch the supply off upstream before anyone touches the charger" >&2
    exit 1
fi
echo "evsed safe-off: NOT SAFE: no copy of evsed drove every output (tried$tried)" >&2
exit 1
