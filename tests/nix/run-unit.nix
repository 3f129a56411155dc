# nix/unit.nix for a real run inside systemd-sandbox (tests/nix/check.sh):
# the same hardened unit, with the supervisor built by cargo, a config and
# data directory under target/, and an existing system user, so the real
# supervisor and the stand-in UI show that the hardening lets them work.
{
  supervisorBin,
  configPath,
  dataDir,
  user,
  group,
  # Directories standing for the unit's `path` packages and for the ones NixOS
  # always adds (coreutils, findutils, grep, sed, systemd): each has a bin/.
  pathDirs ? [ ],
  defaultPathDirs ? [ ],
}:
import ../../nix/render-unit.nix (
  {
    defaultPath = defaultPathDirs;
  }
  // import ../../nix/unit.nix {
    inherit
      supervisorBin
      configPath
      dataDir
      user
      group
      ;
    configFile = configPath;
    runtimeDirectory = "sd-webui-forge-check";
    startupTimeout = "1m";
    stopTimeout = "10s";
    path = pathDirs;
  }
)
