# The systemd service of sd-webui-supervisor, as plain data.
#
# A function from the few values the unit depends on to the attribute set
# NixOS expects under `systemd.services.<name>` (`serviceConfig`,
# `unitConfig`, `reloadIfChanged`, ...). It uses no nixpkgs and no `lib`, so
# the unit can be evaluated, rendered (./render-unit.nix) and checked with
# `systemd-analyze security` on a machine that has only `nix-instantiate`
# (tests/nix/check.sh). module.nix imports it.
{
  # Absolute path of the sd-webui-supervisor binary.
  supervisorBin,
  # The checked config file in the store: the unit's trigger. Anything whose
  # string form is the store path (a derivation, a path string) will do.
  configFile,
  # Where the service reads its config. Fixed, so that a config change never
  # changes the unit's [Service] section (see reloadIfChanged below).
  configPath ? "/etc/sd-webui-forge/config.toml",
  user ? "sd-webui-forge",
  group ? "sd-webui-forge",
  dataDir ? "/var/lib/sd-webui-forge",
  # Octal permissions of the data directory, as in the TOML's data.permissions.
  dataPermissions ? "0700",
  # Name of the directory under /run holding the control socket.
  runtimeDirectory ? "sd-webui-forge",
  # GPU indices (CUDA_VISIBLE_DEVICES), or null for "every GPU the driver has".
  gpus ? null,
  # The supervisor's own limits, as written in the TOML (ui.startup_timeout,
  # ui.stop_timeout): durations such as "15m" or "30s" that systemd reads too.
  startupTimeout ? "15m",
  stopTimeout ? "30s",
  # systemd credentials: id -> file on the host, loaded with LoadCredential=
  # and readable by the service as /run/credentials/<unit>/<id>.
  credentials ? { },
  # Packages on the service's PATH (NixOS `systemd.services.<name>.path`; NixOS
  # adds coreutils, findutils, grep, sed and systemd itself). Forge and A1111
  # need git: they import GitPython at start, which exits without one.
  path ? [ ],
}:
let
  inherit (builtins)
    attrNames
    stringLength
    substring
    ;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  removePrefix = prefix: s: substring (stringLength prefix) (stringLength s) s;
  optionalAttrs = cond: attrs: if cond then attrs else { };
  stripSlash =
    s:
    if stringLength s > 1 && substring (stringLength s - 1) 1 s == "/" then
      stripSlash (substring 0 (stringLength s - 1) s)
    else
      s;

  dir = stripSlash (toString dataDir);

  # A data directory under /var/lib is a StateDirectory: systemd creates it
  # with the right owner and mode before the service starts, and it survives
  # ProtectSystem=strict without further ado. Anywhere else module.nix creates
  # it with tmpfiles and the unit lists it in ReadWritePaths=.
  stateDirectory = if hasPrefix "/var/lib/" dir then removePrefix "/var/lib/" dir else null;

  # ProtectHome=true hides /home, /root and /run/user entirely, so a data
  # directory there could not be reached at all; in that case the unit uses
  # ProtectHome=tmpfs (an empty tmpfs over them) and binds the data directory
  # back in, which keeps every other home directory out of reach.
  inHome = hasPrefix "/home/" dir || hasPrefix "/root/" dir || hasPrefix "/run/user/" dir;

  # The umask that gives new files no more than data.permissions allows:
  # 0700 -> 0077, 0750 -> 0027, 0755 -> 0022. The UI writes its outputs with
  # it, so "0750" really lets a gallery app in the group read the images.
  octalComplement = {
    "0" = "7";
    "1" = "6";
    "2" = "5";
    "3" = "4";
    "4" = "3";
    "5" = "2";
    "6" = "1";
    "7" = "0";
  };
  permLen = stringLength dataPermissions;
  groupDigit = substring (permLen - 2) 1 dataPermissions;
  otherDigit = substring (permLen - 1) 1 dataPermissions;
  umask = "00${octalComplement.${groupDigit}}${octalComplement.${otherDigit}}";

  # NVIDIA character devices. CUDA opens /dev/nvidiactl and /dev/nvidia-uvm
  # (unified memory; nvidia-uvm-tools for its profiling counterpart) and one
  # /dev/nvidia<N> per visible GPU; the driver also opens /dev/nvidia-modeset
  # when it is there. With `gpus` given, exactly those GPU nodes are allowed,
  # so the unit cannot reach another tenant's card even if CUDA_VISIBLE_DEVICES
  # were bypassed. With `gpus` unset the UI sees every GPU (the config says
  # "inherit"), and the number of cards is not known when the system is
  # built, so the unit allows the whole `nvidia-frontend` device group from
  # /proc/devices: the major number of every /dev/nvidia<N>. Entries for nodes
  # that do not exist (no GPU, driver not loaded) are skipped by systemd with a
  # log line; the supervisor's GPU preflight then says what is missing.
  gpuDevices =
    if gpus == null then [ "char-nvidia-frontend rw" ] else map (n: "/dev/nvidia${toString n} rw") gpus;
  deviceAllow = [
    "/dev/nvidiactl rw"
    "/dev/nvidia-uvm rw"
    "/dev/nvidia-uvm-tools rw"
    "/dev/nvidia-modeset rw"
  ]
  ++ gpuDevices;

  credentialIds = attrNames credentials;
in
{
  description = "Stable Diffusion web UI under sd-webui-supervisor";
  wantedBy = [ "multi-user.target" ];
  after = [ "network.target" ];
  inherit path;

  # A `nixos-rebuild switch` must never kill a running generation. By default
  # switch-to-configuration stops and starts a service whose unit changed,
  # which would SIGTERM the UI in the middle of a job. Instead:
  # - reloadIfChanged: whatever changed in the unit, the switch *reloads* it
  #   (SIGHUP via Type=notify-reload) rather than restarting it. The
  #   supervisor re-reads its config, applies settings and models live,
  #   schedules anything that needs a UI restart for when the UI's queue is
  #   empty (restart.policy, with a deadline), and answers the reload at once,
  #   so the switch never waits for the queue either.
  # - ExecStart reads the config from the fixed path
  #   /etc/sd-webui-forge/config.toml, so the unit has to name the checked
  #   config file to change when only the config does: it is a trigger.
  #   It goes in restartTriggers, not reloadTriggers: with reloadIfChanged
  #   both mean "reload", and NixOS warns on every build about a service with
  #   reloadIfChanged and reloadTriggers both set (nixos/modules/system/boot/systemd.nix).
  # - A change of the unit itself is a reload too, and the config carries it
  #   (docs/upgrade.md): a new supervisor package changes
  #   `[supervisor] executable`, and the supervisor execs the new binary in
  #   place (same PID, the UI keeps running); any other change of the
  #   service settings (hardening, Environment=, DeviceAllow=, User=) changes
  #   `[supervisor] unit_fingerprint`, and the supervisor restarts the whole
  #   service once the UI is idle, by exiting with status 75
  #   (RestartForceExitStatus= below).
  reloadIfChanged = true;
  restartTriggers = [ configFile ];

  unitConfig = {
    RequiresMountsFor = [ dir ];
  };

  serviceConfig = {
    # The supervisor sends READY=1 only once the UI answers its readiness
    # probe, so `active` means the UI is really up. On `systemctl reload`
    # systemd sends SIGHUP and waits for RELOADING=1 (with MONOTONIC_USEC) and
    # READY=1 from the supervisor: a synchronous reload without ExecReload=.
    Type = "notify-reload";
    ReloadSignal = "SIGHUP";
    # Only the supervisor may notify; the UI's Python cannot fake readiness.
    NotifyAccess = "main";
    ExecStart = "${supervisorBin} run --config ${configPath}";

    User = user;
    Group = group;
    WorkingDirectory = dir;

    # Loading a model (several GB from disk onto the GPU) can take many
    # minutes, and the unit must stay `activating` until the UI answers. The
    # supervisor keeps extending the start timeout with EXTEND_TIMEOUT_USEC
    # and gives up itself after ui.startup_timeout; systemd's limit sits a
    # little beyond that (systemd adds up the parts of "15m 5min") so the
    # supervisor's own, clearer error comes first. The same limit bounds a
    # reload, which never waits for the queue.
    TimeoutStartSec = "${startupTimeout} 5min";
    # Stopping: the supervisor sends SIGINT to the UI's process group, waits
    # ui.stop_timeout, then SIGKILLs the group and waits for it to be gone
    # (GPU memory freed). systemd waits that long plus 30 s.
    TimeoutStopSec = "${stopTimeout} 30s";
    # SIGTERM goes to the supervisor only, which stops the UI gracefully as
    # above; whatever is left in the cgroup once it exits gets SIGKILL, so no
    # stray process keeps GPU memory. `control-group` would SIGTERM the UI
    # behind the supervisor's back; `process` could leave an orphan UI.
    KillMode = "mixed";
    # The daemon pings at half this interval while its own loop is healthy.
    WatchdogSec = "60s";
    # A crash of the supervisor (or a missed watchdog) restarts the service,
    # backing off from 5 s to 5 min. UI crashes are handled by the supervisor
    # itself (its own backoff, then a `failed` state shown in Status:).
    Restart = "on-failure";
    # 75: the unit changed (unit_fingerprint) and the supervisor, with the UI
    # stopped once idle, asks to be started again under the new unit.
    RestartForceExitStatus = "75";
    RestartSec = "5s";
    RestartSteps = 8;
    RestartMaxDelaySec = "5min";
    # An OOM kill of the UI is a UI crash for the supervisor to handle (restart
    # with backoff, reported in status); systemd's default, `stop`, would take
    # the whole service down instead.
    OOMPolicy = "continue";

    # /run/sd-webui-forge/control.sock (0660): group members may use the CLI.
    RuntimeDirectory = runtimeDirectory;
    RuntimeDirectoryMode = "0750";
    ReadWritePaths = [ dir ];
    UMask = umask;

    # Hardening. Everything that PyTorch on an NVIDIA GPU tolerates is on;
    # every exception carries its reason.
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    # A user namespace that maps only root and the service user; NVIDIA nodes
    # are world read/write (0666), so the GPU needs no group membership.
    PrivateUsers = true;
    PrivateTmp = true;
    # PrivateDevices=true would mount a minimal /dev without the /dev/nvidia*
    # nodes, so CUDA would find no GPU. Device access is limited instead by the
    # cgroup device filter: DevicePolicy=closed allows only the pseudo devices
    # (/dev/null, zero, full, random, urandom) plus what DeviceAllow= lists.
    PrivateDevices = false;
    DevicePolicy = "closed";
    DeviceAllow = deviceAllow;
    ProtectSystem = "strict";
    ProtectHome = if inHome then "tmpfs" else true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    # Other users' processes are invisible; the supervisor only looks at its
    # own children.
    ProtectProc = "invisible";
    # ProcSubset=pid would hide /proc/cpuinfo and /proc/meminfo, which PyTorch
    # and the UIs read to size their thread pools and memory offloading.
    ProcSubset = "all";
    # AF_UNIX: the control socket, D-Bus and journald. AF_INET/AF_INET6: the
    # front door (the supervisor's listener on ui.port), the UI's web server
    # on its private loopback port, the proxy's and the probes' connections
    # to it. No IPAddressDeny=/SocketBindAllow=: the front door binds
    # ui.port and the UI a port the supervisor picks at start (ephemeral,
    # unknown when the unit is built); ports below 1024 are out of reach
    # anyway (no CAP_NET_BIND_SERVICE). AF_NETLINK: glibc's
    # getaddrinfo(AI_ADDRCONFIG) asks the kernel over netlink which address
    # families are configured; without it, resolving "localhost" in the UI's
    # HTTP stack fails.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    PrivateMounts = true;
    SystemCallArchitectures = "native";
    # @system-service includes @resources (sched_setaffinity, mbind,
    # set_mempolicy), which PyTorch's OpenMP and NUMA code use. A filtered
    # call fails with EPERM instead of killing the UI with SIGSYS.
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    SystemCallErrorNumber = "EPERM";
    # MemoryDenyWriteExecute is deliberately NOT set: PyTorch JIT-compiles
    # kernels (oneDNN, Triton, torch.compile) into writable+executable memory
    # and fails with "could not create a primitive" under it.
  }
  // optionalAttrs (stateDirectory != null) {
    StateDirectory = stateDirectory;
    StateDirectoryMode = dataPermissions;
  }
  // optionalAttrs inHome {
    BindPaths = [ dir ];
  }
  // optionalAttrs (credentialIds != [ ]) {
    # Secrets stay root-only on the host; systemd hands the service a copy.
    LoadCredential = map (id: "${id}:${toString credentials.${id}}") credentialIds;
  };
}
