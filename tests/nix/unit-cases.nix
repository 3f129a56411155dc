# nix/unit.nix evaluated for realistic arguments, without nixpkgs.
#   nix-instantiate --eval --strict --json tests/nix/unit-cases.nix
# Result: { results = [ { name; ok; detail; } ]; units = { <file name> = <unit text>; }; }
# tests/nix/check.sh prints the results and runs `systemd-analyze security`
# on every unit in `units`.
let
  unitOf = import ../../nix/unit.nix;
  render = import ../../nix/render-unit.nix;

  supervisorBin = "/nix/store/00000000000000000000000000000000-sd-webui-supervisor-0.1.0/bin/sd-webui-supervisor";
  configFile = "/nix/store/00000000000000000000000000000000-sd-webui-forge-config.toml";

  # What module.nix passes for a two-GPU Forge box with API auth.
  realistic = unitOf {
    inherit supervisorBin configFile;
    user = "sd-webui-forge";
    group = "sd-webui-forge";
    dataDir = "/var/lib/sd-webui-forge";
    dataPermissions = "0750";
    gpus = [
      0
      1
    ];
    startupTimeout = "20m";
    stopTimeout = "45s";
    credentials.api-auth = "/run/secrets/forge-api-auth";
  };
  # gpus unset: every GPU; data on another disk.
  allGpus = unitOf {
    inherit supervisorBin configFile;
    dataDir = "/srv/sd-webui-forge/";
  };
  inHome = unitOf {
    inherit supervisorBin configFile;
    dataDir = "/home/ai/forge";
  };

  s = realistic.serviceConfig;

  check = name: ok: detail: {
    inherit name ok;
    detail = if ok then "" else builtins.toJSON detail;
  };
  eq =
    name: got: expected:
    check name (got == expected) { inherit got expected; };
in
{
  results = [
    (eq "Type=notify-reload" s.Type "notify-reload")
    (eq "ReloadSignal=SIGHUP" s.ReloadSignal "SIGHUP")
    (eq "NotifyAccess=main" s.NotifyAccess "main")
    (eq "ExecStart runs the config at the fixed /etc path" s.ExecStart
      "${supervisorBin} run --config /etc/sd-webui-forge/config.toml"
    )
    (eq "reloadIfChanged" realistic.reloadIfChanged true)
    (eq "the config file is the unit's trigger" realistic.restartTriggers [ configFile ])
    (eq "no reloadTriggers next to reloadIfChanged (NixOS warns)" (realistic ? reloadTriggers) false)
    (eq "KillMode=mixed" s.KillMode "mixed")
    (eq "RestartForceExitStatus=75: a changed unit restarts the service" s.RestartForceExitStatus "75")
    (eq "TimeoutStartSec beyond the supervisor's startup_timeout" s.TimeoutStartSec "20m 5min")
    (eq "TimeoutStopSec beyond the supervisor's stop_timeout" s.TimeoutStopSec "45s 30s")
    (eq "Restart=on-failure" s.Restart "on-failure")
    (check "WatchdogSec set" (s ? WatchdogSec) s)
    (eq "OOMPolicy=continue (a killed UI is the supervisor's to restart)" s.OOMPolicy "continue")
    (eq "StateDirectory for /var/lib/sd-webui-forge" s.StateDirectory "sd-webui-forge")
    (eq "StateDirectoryMode = dataPermissions" s.StateDirectoryMode "0750")
    (eq "UMask from dataPermissions" s.UMask "0027")
    (eq "RuntimeDirectory for the control socket" s.RuntimeDirectory "sd-webui-forge")
    (eq "ReadWritePaths = dataDir" s.ReadWritePaths [ "/var/lib/sd-webui-forge" ])
    (eq "LoadCredential for the API auth file" s.LoadCredential [
      "api-auth:/run/secrets/forge-api-auth"
    ])
    (eq "DevicePolicy=closed" s.DevicePolicy "closed")
    (eq "PrivateDevices=false (would hide /dev/nvidia*)" s.PrivateDevices false)
    (eq "DeviceAllow: control, UVM, modeset and the configured GPUs" s.DeviceAllow [
      "/dev/nvidiactl rw"
      "/dev/nvidia-uvm rw"
      "/dev/nvidia-uvm-tools rw"
      "/dev/nvidia-modeset rw"
      "/dev/nvidia0 rw"
      "/dev/nvidia1 rw"
    ])
    (check "DeviceAllow: every GPU when gpus is unset" (builtins.elem "char-nvidia-frontend rw" allGpus.serviceConfig.DeviceAllow) allGpus.serviceConfig.DeviceAllow)
    (eq "ProtectSystem=strict" s.ProtectSystem "strict")
    (eq "ProtectHome" s.ProtectHome true)
    (eq "ProcSubset=all (PyTorch reads /proc/cpuinfo)" s.ProcSubset "all")
    (eq "no MemoryDenyWriteExecute (breaks PyTorch JIT)" (s ? MemoryDenyWriteExecute) false)
    (eq "CapabilityBoundingSet empty" s.CapabilityBoundingSet "")
    (eq "SystemCallFilter" s.SystemCallFilter [
      "@system-service"
      "~@privileged"
    ])
    (eq "RestrictAddressFamilies" s.RestrictAddressFamilies [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ])
    (eq "other dataDir: no StateDirectory, trailing slash dropped" {
      state = allGpus.serviceConfig ? StateDirectory;
      rw = allGpus.serviceConfig.ReadWritePaths;
      wd = allGpus.serviceConfig.WorkingDirectory;
    } {
      state = false;
      rw = [ "/srv/sd-webui-forge" ];
      wd = "/srv/sd-webui-forge";
    })
    (eq "dataDir in /home: ProtectHome=tmpfs plus BindPaths" {
      inherit (inHome.serviceConfig) ProtectHome BindPaths;
    } {
      ProtectHome = "tmpfs";
      BindPaths = [ "/home/ai/forge" ];
    })
  ];

  units = {
    "sd-webui-forge.service" = render realistic;
    "sd-webui-forge-all-gpus.service" = render allGpus;
  };
}
