# A container image (OCI, docker-archive stream) of the supervisor and a web
# UI, configured with the options of services.sd-webui-forge (./options.nix,
# the NixOS module's own), so a config that works on a NixOS host works the
# same in a container. The supervisor is the entrypoint and runs as PID 1:
# it reaps the UI's orphans and turns SIGTERM into the graceful stop
# (docs/containers.md).
#
#   sd-webui-image { settings = { flavor = "comfyui"; package = pkgs.comfyui; ... }; }
#
# Differences from the module, forced by the container:
# - control.dbus is "off" (no system bus);
# - apiAuthFile, control.tokenFile and front.authFile are paths *inside the
#   container* where the secret is mounted at run time (a Kubernetes Secret,
#   `podman secret`):
#   strings, never Nix paths, so a secret never enters the store or image;
# - user, group, openFirewall and the unit's hardening have no meaning here.
#
# Layers: streamLayeredImage gives each store path of the closure its own
# layer, most shared first, up to maxLayers; the UI's closure (Python,
# PyTorch, CUDA) thus lies in layers of its own that a config change does
# not touch, and the config file, the least shared path, comes last.
{
  lib,
  pkgs,
  dockerTools,
  runCommand,
  cacert,
  sd-webui-supervisor,
}:
{
  # services.sd-webui-forge options, as on NixOS (without `enable`).
  settings,
  name ? "sd-webui-supervisor",
  tag ? "latest",
  maxLayers ? 100,
}:
let
  shared = import ./config.nix { inherit lib; };
  configPath = "/etc/sd-webui-forge/config.toml";

  eval = lib.evalModules {
    modules = [
      ./options.nix
      {
        _module.args.pkgs = pkgs;
        services.sd-webui-forge = {
          enable = true;
          supervisorPackage = lib.mkDefault sd-webui-supervisor;
        };
      }
      { services.sd-webui-forge = settings; }
    ];
  };
  cfg = eval.config.services.sd-webui-forge;

  # Secrets are files mounted into the running container.
  secretFiles = {
    api-auth = cfg.apiAuthFile;
    control-token = cfg.control.tokenFile;
    front-auth = cfg.front.authFile;
  }
  // shared.downloadCredentials cfg;
  credentialPath = id: toString secretFiles.${id};
  secretInStore = lib.filterAttrs (
    _: p: p != null && (builtins.isPath p || lib.hasPrefix builtins.storeDir (toString p))
  ) secretFiles;

  failed = builtins.filter (a: !a.assertion) (
    shared.assertions cfg
    ++ [
      {
        assertion = secretInStore == { };
        message = "sd-webui-image: ${lib.concatStringsSep ", " (builtins.attrNames secretInStore)}: in an image, a secret file is a path inside the container where it is mounted at run time (a string such as \"/run/secrets/sd-webui-forge/control-token\"), never a Nix path: that would copy the secret into the store and the image.";
      }
    ]
  );

  configFile = shared.file {
    inherit pkgs;
    inherit (cfg) supervisorPackage;
    value = shared.toml {
      inherit cfg credentialPath;
      dbus = "off";
    };
    check = cfg.checkConfig;
  };

  # /etc/sd-webui-forge/config.toml, linked into the image's root.
  etc = runCommand "sd-webui-forge-etc" { } ''
    mkdir -p "$out/etc/sd-webui-forge"
    ln -s ${configFile} "$out${configPath}"
  '';

  portOf = address: lib.last (lib.splitString ":" address);
  ports = [
    (toString cfg.port)
  ]
  ++ lib.optional (cfg.control.httpListen != null) (portOf cfg.control.httpListen);
in
if failed != [ ] then
  throw (lib.concatMapStringsSep "\n" (a: a.message) failed)
else
  dockerTools.streamLayeredImage {
    inherit name tag maxLayers;
    # /bin: the supervisor (for `sd-webui-supervisor wait-idle --drain` as a
    # preStop hook, `status`) and the UI's launcher (for a config mounted over
    # the baked one that names it by `command = [ "comfyui" ]`).
    contents = [
      etc
      cfg.supervisorPackage
    ]
    ++ lib.optional eval.options.services.sd-webui-forge.package.isDefined cfg.package
    # Forge and A1111 import GitPython at start and exit 1 without a git on PATH.
    ++ lib.optional (cfg.flavor != "comfyui") pkgs.git;
    # The data dir is a volume; the control socket's folder and /tmp exist.
    extraCommands = ''
      mkdir -p .${cfg.dataDir} run/sd-webui-forge tmp
      chmod ${cfg.dataPermissions} .${cfg.dataDir}
      chmod 1777 tmp
    '';
    config = {
      Entrypoint = [
        "${cfg.supervisorPackage}/bin/sd-webui-supervisor"
        "run"
        "--config"
        configPath
      ];
      # What docker and Kubernetes send; the supervisor as PID 1 stops the
      # UI gracefully on it (SIGINT, stop_timeout, SIGKILL).
      StopSignal = "SIGTERM";
      Env = [
        "PATH=/bin"
        "HOME=${cfg.dataDir}"
        "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
      ];
      Volumes.${cfg.dataDir} = { };
      ExposedPorts = lib.genAttrs (map (p: "${p}/tcp") ports) (_: { });
      Labels = {
        "org.opencontainers.image.title" = name;
        "org.opencontainers.image.description" = "sd-webui-supervisor (${cfg.flavor})";
      };
    };
    passthru = {
      inherit configFile;
      config = cfg;
    };
  }
