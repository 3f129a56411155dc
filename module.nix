# NixOS module: services.sd-webui-forge runs a Stable Diffusion web UI
# (Forge, AUTOMATIC1111 or ComfyUI) under sd-webui-supervisor.
#
# The module owns the glue around the unit: the config file installed as
# /etc/sd-webui-forge/config.toml, the user, data directory, D-Bus policy and
# firewall. The options are ./nix/options.nix and what they mean for the
# supervisor's config file (the TOML of docs/design.md#the-config-file, checked at build time
# with `sd-webui-supervisor check-config`) is ./nix/config.nix, both shared
# with the container image (./nix/image.nix). The unit itself is
# ./nix/unit.nix, plain Nix that the tests evaluate without nixpkgs.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkIf
    mkOption
    optional
    optionalAttrs
    types
    ;

  cfg = config.services.sd-webui-forge;

  defaultName = "sd-webui-forge";
  serviceName = "sd-webui-forge";
  configPath = "/etc/sd-webui-forge/config.toml";
  credentialPath = id: "/run/credentials/${serviceName}.service/${id}";
  dbusPolicyFile = "share/dbus-1/system.d/io.github.sd_webui_supervisor.Supervisor1.conf";

  shared = import ./nix/config.nix { inherit lib; };

  checkedConfig = shared.file {
    inherit pkgs;
    inherit (cfg) supervisorPackage;
    value = shared.toml { inherit cfg credentialPath; } // {
      supervisor = {
        executable = supervisorBin;
        unit_fingerprint = unitFingerprint;
      };
    };
    check = cfg.checkConfig;
  };

  # Self-upgrade (docs/upgrade.md). `executable` names the package's binary,
  # so a package bump is a config change: the reload hands the running state
  # over to the new binary in place, and the UI keeps running.
  supervisorBin = "${cfg.supervisorPackage}/bin/sd-webui-supervisor";
  # `unit_fingerprint` labels the unit's service settings as systemd gets
  # them, leaving out what the supervisor applies itself: ExecStart's binary
  # (the handoff) and the config file (a reload). PATH is left out too: NixOS
  # fills it with store paths that change with every nixpkgs bump, and the
  # supervisor runs nothing from it. A changed fingerprint makes the
  # supervisor restart the whole service once the UI is idle.
  #
  # It also covers the front door: [front], and behind it ui.port and
  # ui.listen (its address), which the supervisor sets up once at start and
  # a reload only reports under next_start. A switch that changes them would
  # otherwise do nothing until the next boot (a new port not listened on, a
  # new front.authFile not in force); so they restart the service once the
  # UI is idle, under restart.policy, as a unit change does. ([control]
  # also waits for the next start, but concerns the supervisor's own
  # clients only; it stays out.)
  service = config.systemd.services.${serviceName};
  frontDoor =
    shared.frontToml {
      inherit cfg credentialPath;
    }
    // lib.optionalAttrs cfg.front.enable { inherit (cfg) port listen; };
  maskBin = v: if builtins.isString v then lib.replaceStrings [ supervisorBin ] [ "@supervisor@" ] v else v;
  unitFingerprint = builtins.hashString "sha256" (
    builtins.toJSON (
      {
        serviceConfig =
          service.serviceConfig
          // lib.optionalAttrs (service.serviceConfig ? ExecStart) {
            ExecStart =
              let
                e = service.serviceConfig.ExecStart;
              in
              if builtins.isList e then map maskBin e else maskBin e;
          };
        environment = removeAttrs (service.environment or { }) [ "PATH" ];
        inherit frontDoor;
      }
      # The set of instances is fixed while the supervisor runs: adding or
      # removing one takes effect at its next start. (Only with instances, so
      # that the fingerprint of a config without them stays as it was.)
      // lib.optionalAttrs (cfg.instances != { }) { instances = builtins.attrNames cfg.instances; }
    )
  );

  # The GPUs the unit's device filter allows: with instances, those of all of
  # them (each names its own; `gpus` is then null).
  unitGpus =
    if cfg.instances != { } then
      lib.unique (lib.sort lib.lessThan (lib.concatMap (i: i.gpus) (builtins.attrValues cfg.instances)))
    else
      cfg.gpus;

  credentials =
    lib.filterAttrs (_: v: v != null) {
      api-auth = cfg.apiAuthFile;
      control-token = cfg.control.tokenFile;
      front-auth = cfg.front.authFile;
    }
    // shared.downloadCredentials cfg;

  # The supervisor package ships the bus policy for the default user and
  # group. For others, a copy with the names replaced (at build time, so the
  # evaluation never has to read the package).
  dbusPackage =
    if cfg.user == defaultName && cfg.group == defaultName then
      cfg.supervisorPackage
    else
      pkgs.runCommand "sd-webui-forge-dbus-policy" { preferLocalBuild = true; } ''
        mkdir -p "$out/share/dbus-1/system.d"
        sed -e 's/user="${defaultName}"/user="${cfg.user}"/g' \
            -e 's/group="${defaultName}"/group="${cfg.group}"/g' \
            ${cfg.supervisorPackage}/${dbusPolicyFile} > "$out/${dbusPolicyFile}"
        grep -q 'user="${cfg.user}"' "$out/${dbusPolicyFile}"
      '';
in
{
  imports = [ ./nix/options.nix ];

  options.services.sd-webui-forge = {
    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = checkedConfig;
      defaultText = lib.literalMD "the generated and checked config file";
      description = "The supervisor's config file, as installed at {file}`${configPath}`.";
    };
  };

  config = mkIf cfg.enable {
    assertions = shared.assertions cfg;

    warnings = optional (cfg.openFirewall && !cfg.listen) ''
      services.sd-webui-forge.openFirewall opens port ${toString cfg.port}, but the UI listens on loopback only; set services.sd-webui-forge.listen = true, or drop openFirewall.'';

    environment.etc."sd-webui-forge/config.toml".source = checkedConfig;

    systemd.services.${serviceName} = import ./nix/unit.nix {
      inherit supervisorBin;
      configFile = checkedConfig;
      inherit configPath credentials;
      # Forge and A1111 import GitPython at start and exit 1 ("Bad git
      # executable") when no git is on PATH; a NixOS service's PATH has none.
      path = optional (cfg.flavor != "comfyui") pkgs.git;
      gpus = unitGpus;
      inherit (cfg)
        user
        group
        dataDir
        dataPermissions
        startupTimeout
        stopTimeout
        ;
    };

    systemd.tmpfiles.rules = optional (!lib.hasPrefix "/var/lib/" cfg.dataDir) "d '${cfg.dataDir}' ${cfg.dataPermissions} ${cfg.user} ${cfg.group} - -";

    users.users = optionalAttrs (cfg.user == defaultName) {
      ${defaultName} = {
        isSystemUser = true;
        inherit (cfg) group;
        home = cfg.dataDir;
        description = "Stable Diffusion web UI";
      };
    };
    users.groups = optionalAttrs (cfg.group == defaultName) { ${defaultName} = { }; };

    services.dbus.packages = optional (cfg.control.dbus == "system") dbusPackage;

    # The sleep inhibitor (gpu.inhibitSleep) needs polkit's yes for the
    # service's user (./nix/polkit.nix). The rule only matters where polkit
    # runs; the module does not turn polkit on.
    security.polkit.extraConfig = lib.optionalString cfg.gpu.inhibitSleep (
      import ./nix/polkit.nix { inherit (cfg) user; }
    );

    networking.firewall.allowedTCPPorts = optional cfg.openFirewall cfg.port;
  };
}
