#!/bin/sh
# evsed: the ExecStopPost=+ of evsed-rollback.service, run as root when the watcher ends.
# `evsed install` copies it to /usr/local/lib/evsed/after-rollback.sh (root's, 0755: the
# service user can change nothing root runs). See systemd/README.md (firmware updates).
#
# Only after a rollback (the watcher's exit status 3: it has put /opt/evsed/current back to
# the previous version) and only when evsed.service was not deliberately stopped, restart
# it into the old version. The states evsed.service can be in at that moment:
#   active, reloading         the new version runs but never confirmed (hung before its
#                             boot): restart
#   activating                starting, or auto-restart (the new version crashes in a loop,
#                             systemd waits RestartSec between tries): restart
#   failed, main status 2     the new version exited 2 (RestartPreventExitStatus=2, e.g. it
#                             refuses the old configuration): restart, the old one may run
#   failed, any other status  a stop that went wrong (stop timeout, a failed safe-off after
#                             `systemctl stop`): an operator stopped it, leave it
#   inactive, deactivating    stopped, or being stopped, by an operator: leave it
# The links stay on the old version whatever happens: `systemctl start evsed` starts it.
set -u
unit=evsed.service
[ "${EXIT_STATUS:-}" = 3 ] || exit 0
state=$(systemctl is-active "$unit" 2>/dev/null)
restart=no
case "$state" in
    active | reloading | activating) restart=yes ;;
    failed)
        main=$(systemctl show --property=ExecMainStatus --value "$unit" 2>/dev/null)
        [ "$main" = 2 ] && restart=yes
        ;;
esac
if [ "$restart" = yes ]; then
    echo "evsed-rollback: $unit is $state: restarting it into the previous version"
    exec systemctl --no-block restart "$unit"
fi
echo "evsed-rollback: $unit is ${state:-unknown} (stopped by an operator): not restarted;" \
    "the previous version is in /opt/evsed/current, 'systemctl start evsed' starts it"
exit 0
