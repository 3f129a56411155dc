# NixOS module: services.sd-webui-forge runs a Stable Diffusion web UI
# (Forge, AUTOMATIC1111 or ComfyUI) under sd-webui-supervisor.
#
# The module owns three things: the options, the supervisor's config file
# (the TOML of DESIGN §3.2, rendered with pkgs.formats.toml, checked at build
# time with `sd-webui-supervisor check-config`, installed as
# /etc/sd-webui-forge/config.toml) and the glue around the unit (user, data
# directory, D-Bus policy, firewall). The unit itself is ./nix/unit.nix, plain
# Nix that the tests evaluate without nixpkgs.
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
  controlSocket = "/run/sd-webui-forge/control.sock";
  credentialPath = id: "/run/credentials/${serviceName}.service/${id}";
  dbusPolicyFile = "share/dbus-1/system.d/io.github.sd_webui_supervisor.Supervisor1.conf";

  settingsFormat = pkgs.formats.toml { };

  # Model kinds each flavor uses (DESIGN §3.2); the supervisor knows the
  # folders, the module only needs the names for its assertion.
  kindsOf = rec {
    a1111 = [
      "checkpoints"
      "loras"
      "vae"
      "embeddings"
      "controlnet"
      "upscalers"
      "hypernetworks"
    ];
    forge = a1111 ++ [ "text_encoders" ];
    comfyui = forge ++ [
      "diffusion_models"
      "clip_vision"
    ];
  };

  # The launcher of packages that do not name one in meta.mainProgram, as
  # the common packagings call it.
  defaultProgram = {
    forge = "stable-diffusion-webui";
    a1111 = "stable-diffusion-webui";
    comfyui = "comfyui";
  };

  # A duration the supervisor (humantime) and systemd both read: "30s",
  # "15m", "6h", "1h 30m".
  durationType = types.strMatching "([0-9]+ ?(ms|s|m|min|h|d) ?)+" // {
    description = ''duration such as "30s", "15m" or "6h"'';
  };

  # A model, extension or other file the UI should see: a package or store
  # path (fetchModel, pkgs.fetchurl, a path literal, which is copied into the
  # store) or an absolute path on the machine (a model on a big disk).
  fileType =
    types.coercedTo types.path (p: "${p}") (types.strMatching "/.*")
    // {
      description = "package, store path or absolute path";
    };

  # A model fetched by the supervisor at run time (gated models that need a
  # token, or files too big to keep twice in the store). The token file is
  # never read by Nix: it is handed to the unit with LoadCredential=.
  downloadType = types.submodule {
    options = {
      url = mkOption {
        type = types.str;
        description = "Where to download the model (https; http only to a loopback host).";
      };
      sha256 = mkOption {
        type = types.str;
        description = ''The file's SHA-256: SRI ("sha256-..."), hex, or Nix base32 as in fetchurl.'';
      };
      tokenFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        description = ''
          Absolute path (a string, never a Nix path, which would copy the
          secret into the store) of a file holding the token, e.g. a
          Civitai or Hugging Face token. Passed to the service with
          `LoadCredential=` and sent only to the URL's own host.
        '';
      };
      tokenHeader = mkOption {
        type = types.str;
        default = "Authorization";
        description = ''Header carrying the token; "Authorization" sends "Bearer <token>".'';
      };
    };
  };
  modelType = types.either fileType downloadType // {
    description = "package, store path, absolute path, or { url; sha256; tokenFile; }";
  };
  # Paths and packages are strings once merged (fileType coerces them).
  isDownload = builtins.isAttrs;
  # One credential per distinct token file, named by its path's hash so the
  # id is a valid file name whatever the model is called.
  tokenId = file: "download-token-${builtins.substring 0 16 (builtins.hashString "sha256" file)}";
  downloads = lib.concatMap (
    kind: builtins.filter isDownload (builtins.attrValues cfg.models.${kind})
  ) (builtins.attrNames cfg.models);
  tokenFiles = lib.unique (
    builtins.filter (f: f != null) (map (d: d.tokenFile) downloads)
  );
  renderModel =
    v:
    if isDownload v then
      {
        inherit (v) url sha256;
        token_header = v.tokenHeader;
      }
      // optionalAttrs (v.tokenFile != null) { token_file = credentialPath (tokenId v.tokenFile); }
    else
      v;

  # A single string, as in existing configs (`extraArgs = "--cuda-malloc";`),
  # is split on whitespace. It cannot quote, so a quote is an error instead
  # of an argument with a stray quote character in it.
  splitArgs =
    s:
    if builtins.match ".*[\"'].*" s != null then
      throw ''
        services.sd-webui-forge.extraArgs: the string form is split on whitespace and cannot quote: ${s}
        Write a list instead, e.g. extraArgs = [ "--flag" "value with spaces" ];''
    else
      builtins.filter (a: builtins.isString a && a != "") (builtins.split "[[:space:]]+" s);

  # Flags the supervisor sets itself from other options; passing them in
  # extraArgs would make the UI disagree with what the supervisor probes.
  managedFlags = {
    "--port" = "port";
    "--listen" = "listen";
    "--server-name" = "listen";
    "--data-dir" = "dataDir";
    "--base-directory" = "dataDir";
    "--api-auth" = "apiAuthFile";
  };
  flagName = arg: builtins.head (lib.splitString "=" arg);
  misplacedFlags = builtins.filter (a: managedFlags ? ${flagName a}) cfg.extraArgs;

  # The TOML of DESIGN §3.2.
  nonEmpty = lib.filterAttrs (_: v: v != { });
  tomlConfig = nonEmpty {
    ui = {
      inherit (cfg)
        flavor
        command
        listen
        port
        ;
      extra_args = cfg.extraArgs;
      environment = {
        # Python buffers stdout when it is a pipe, which hides the UI's log
        # lines from the journal until the buffer fills.
        PYTHONUNBUFFERED = "1";
      }
      // cfg.environment;
      startup_timeout = cfg.startupTimeout;
      stop_timeout = cfg.stopTimeout;
    }
    // optionalAttrs (cfg.gpus != null) { inherit (cfg) gpus; }
    // optionalAttrs (cfg.apiAuthFile != null) { api_auth_file = credentialPath "api-auth"; };
    data = {
      dir = cfg.dataDir;
      permissions = cfg.dataPermissions;
    };
    models = nonEmpty (builtins.mapAttrs (_: builtins.mapAttrs (_: renderModel)) cfg.models);
    downloads = optionalAttrs (downloads != [ ] || cfg.downloads.maxConcurrent != 2) {
      max_concurrent = cfg.downloads.maxConcurrent;
    };
    inherit (cfg) extensions settings;
    restart = {
      inherit (cfg.restart) policy deadline;
      idle_grace = cfg.restart.idleGrace;
      poll_interval = cfg.restart.pollInterval;
    };
    control = {
      socket = controlSocket;
      inherit (cfg.control) dbus;
    }
    // optionalAttrs (cfg.control.httpListen != null) {
      http_listen = cfg.control.httpListen;
      token_file = credentialPath "control-token";
    };
  };

  renderedConfig = settingsFormat.generate "sd-webui-forge.toml" tomlConfig;

  # Validate at build time with the supervisor's own checker, so a bad config
  # fails `nixos-rebuild` with its `FILE:LINE:COL: key.path: message` lines
  # instead of failing the service at start.
  checkedConfig =
    if cfg.checkConfig then
      pkgs.runCommand "sd-webui-forge-config.toml"
        {
          preferLocalBuild = true;
          unchecked = renderedConfig;
        }
        ''
          ${cfg.supervisorPackage}/bin/sd-webui-supervisor check-config --config "$unchecked"
          ln -s "$unchecked" "$out"
        ''
    else
      renderedConfig;

  credentials =
    lib.filterAttrs (_: v: v != null) {
      api-auth = cfg.apiAuthFile;
      control-token = cfg.control.tokenFile;
    }
    // lib.listToAttrs (map (f: lib.nameValuePair (tokenId f) f) tokenFiles);

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

  isPlainName = n: n != "" && builtins.match "[.].*|.*/.*" n == null;
  badNames = names: builtins.filter (n: !isPlainName n) (builtins.attrNames names);
  unusedKinds = builtins.filter (k: !builtins.elem k kindsOf.${cfg.flavor}) (
    builtins.attrNames cfg.models
  );
  flavorsFor = kind: builtins.filter (f: builtins.elem kind kindsOf.${f}) (builtins.attrNames kindsOf);
in
{
  options.services.sd-webui-forge = {
    enable = lib.mkEnableOption "a Stable Diffusion web UI (Forge, AUTOMATIC1111 or ComfyUI) under sd-webui-supervisor";

    flavor = mkOption {
      type = types.enum [
        "forge"
        "a1111"
        "comfyui"
      ];
      default = "forge";
      description = ''
        Which web UI {option}`package` is: its flags, API, readiness and busy
        probes, and where it wants models.
      '';
    };

    package = mkOption {
      type = types.package;
      example = lib.literalExpression "pkgs.stable-diffusion-webui.forge.cuda";
      description = ''
        The web UI to run. Its main program (`meta.mainProgram`, else
        `bin/stable-diffusion-webui` or `bin/comfyui` by {option}`flavor`) is
        started with the flags the supervisor needs followed by
        {option}`extraArgs`. Not needed when {option}`command` is set.
      '';
    };

    command = mkOption {
      type = types.nonEmptyListOf types.str;
      default = [
        "${lib.getBin cfg.package}/bin/${cfg.package.meta.mainProgram or defaultProgram.${cfg.flavor}}"
      ];
      defaultText = lib.literalMD ''
        the package's `meta.mainProgram`, or else `bin/stable-diffusion-webui`
        (Forge, AUTOMATIC1111) or `bin/comfyui` (ComfyUI)
      '';
      description = "The command that starts the UI, before the supervisor's flags and {option}`extraArgs`.";
    };

    supervisorPackage = mkOption {
      type = types.package;
      default = pkgs.sd-webui-supervisor;
      defaultText = lib.literalExpression "pkgs.sd-webui-supervisor";
      description = ''
        The sd-webui-supervisor package. The flake's `nixosModules.default`
        sets it to the flake's own build; without the flake, add its overlay or
        set this option.
      '';
    };

    user = mkOption {
      type = types.str;
      default = defaultName;
      description = ''
        User the service runs as. It is created when left at the default;
        otherwise it must exist. A static user (not `DynamicUser`) because
        only a named user can own a name on the D-Bus system bus.
      '';
    };

    group = mkOption {
      type = types.str;
      default = defaultName;
      description = ''
        Group of the service, created when left at the default. Members may
        use the control socket ({command}`sd-webui-supervisor status`) and
        call the D-Bus interface.
      '';
    };

    dataDir = mkOption {
      type = types.path;
      default = "/var/lib/sd-webui-forge";
      apply = p: lib.removeSuffix "/" (toString p);
      example = "/srv/sd-webui-forge";
      description = ''
        The UI's data directory: models (as links), extensions, outputs,
        `config.json`. Under {file}`/var/lib` it is the unit's
        `StateDirectory`; anywhere else it is created with tmpfiles.
      '';
    };

    dataPermissions = mkOption {
      type = types.strMatching "0?[0-7]{3}";
      default = "0700";
      example = "0750";
      description = ''
        Permissions of the data directory tree. The service's umask follows
        them, so `"0750"` lets members of {option}`group` (a gallery app, say)
        read what the UI writes.
      '';
    };

    listen = mkOption {
      type = types.bool;
      default = false;
      description = "Whether the UI listens on all interfaces; when false, on loopback only.";
    };

    port = mkOption {
      type = types.port;
      default = if cfg.flavor == "comfyui" then 8188 else 7860;
      defaultText = lib.literalExpression ''if flavor == "comfyui" then 8188 else 7860'';
      description = "The UI's HTTP port.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open {option}`port` in the firewall (useful with {option}`listen`).";
    };

    extraArgs = mkOption {
      type = types.coercedTo types.str splitArgs (types.listOf types.str);
      default = [ ];
      example = [
        "--cuda-malloc"
        "--pin-shared-memory"
      ];
      description = ''
        Extra command-line arguments, appended last so they win. A single
        string is accepted and split on whitespace (no quoting). Flags the
        supervisor sets from other options (`--port`, `--listen`,
        `--data-dir`, ...) are rejected with the option to use instead.
        Changing them restarts the UI when its queue is empty.
      '';
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
      };
      description = ''
        Environment of the UI process. `PYTHONUNBUFFERED=1` is set unless
        given here. Use {option}`gpus`, not `CUDA_VISIBLE_DEVICES`.
      '';
    };

    gpus = mkOption {
      type = types.nullOr (types.listOf types.ints.unsigned);
      default = null;
      example = [ 0 ];
      description = ''
        NVIDIA GPUs the UI may use (`CUDA_VISIBLE_DEVICES`). The unit's
        device filter then allows exactly `/dev/nvidia<N>` of these. `null`:
        every GPU.
      '';
    };

    models = mkOption {
      type = types.attrsOf (types.attrsOf modelType);
      default = { };
      example = lib.literalExpression ''
        {
          checkpoints."sd_xl_base_1.0.safetensors" = sd-webui-supervisor.lib.fetchModel {
            url = "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors";
            hash = "sha256-...";
          };
          loras."add-detail.safetensors" = "/srv/models/add-detail.safetensors";
          checkpoints."illustrious-xl.safetensors" = {
            url = "https://civitai.com/api/download/models/889818?type=Model&format=SafeTensor";
            sha256 = "sha256-...";
            tokenFile = "/run/secrets/civitai-token";
          };
        }
      '';
      description = ''
        Models linked into the data directory: kind, then file name (what the
        UI shows, so keep the extension), then a package, store path or
        absolute path. Kinds: `checkpoints`, `loras`, `vae`, `embeddings`,
        `controlnet`, `upscalers`, `hypernetworks`, `text_encoders` (Forge,
        ComfyUI), `diffusion_models` and `clip_vision` (ComfyUI). Changes
        apply without restarting the UI. Files you put there yourself are
        never touched.

        A model may also be `{ url; sha256; tokenFile ? null; tokenHeader ?
        "Authorization"; }`: the supervisor downloads it at run time into
        its cache in the data directory, checks the hash, and links it once
        it is complete; the UI starts meanwhile with what is present.
      '';
    };

    downloads.maxConcurrent = mkOption {
      type = types.ints.between 1 64;
      default = 2;
      description = "At most this many models are downloaded at once.";
    };

    extensions = mkOption {
      type = types.attrsOf fileType;
      default = { };
      example = lib.literalExpression ''{ "sd-webui-localization-ja" = pkgs.fetchFromGitHub { ... }; }'';
      description = ''
        Extensions (Forge, AUTOMATIC1111: {file}`extensions/<name>`) or custom
        nodes (ComfyUI: {file}`custom_nodes/<name>`), by directory name.
        Changing them restarts the UI when its queue is empty.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = {
        sd_model_checkpoint = "sd_xl_base_1.0.safetensors";
        CLIP_stop_at_last_layers = 2;
      };
      description = ''
        Managed UI settings (Forge/AUTOMATIC1111 `config.json` keys). They
        are enforced on every start and reload and applied live; every other
        key the UI or you wrote is kept.
      '';
    };

    startupTimeout = mkOption {
      type = durationType;
      default = "15m";
      description = "How long the UI may take to answer after launch (model loading included) before it counts as crashed.";
    };

    stopTimeout = mkOption {
      type = durationType;
      default = "30s";
      description = "How long the UI gets to exit after SIGINT before it is killed.";
    };

    restart = {
      policy = mkOption {
        type = types.enum [
          "when-idle"
          "immediately"
          "manual"
        ];
        default = "when-idle";
        description = ''
          When a change that needs a UI restart (arguments, environment,
          extensions, GPUs, port, the UI package) takes effect:
          `when-idle`, once the queue has been empty for
          {option}`restart.idleGrace` or at {option}`restart.deadline`;
          `immediately`; or `manual` (status reports it, {command}`sd-webui-supervisor restart` does it).
        '';
      };
      idleGrace = mkOption {
        type = durationType;
        default = "10s";
        description = "How long the queue must stay empty before a pending restart happens.";
      };
      deadline = mkOption {
        type = types.either (types.enum [ "never" ]) durationType;
        default = "6h";
        description = ''How long a pending restart may wait for an idle queue before it happens anyway; `"never"` to wait forever.'';
      };
      pollInterval = mkOption {
        type = durationType;
        default = "2s";
        description = "How often the queue is probed while a restart is pending.";
      };
    };

    apiAuthFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/sd-webui-api-auth";
      description = ''
        File with `user:password` for the UI's API (`--api-auth`). Read by
        systemd (`LoadCredential`), so it may be readable by root only; it
        never enters the Nix store.
      '';
    };

    control = {
      dbus = mkOption {
        type = types.enum [
          "system"
          "off"
        ];
        default = "system";
        description = "Whether the supervisor offers its D-Bus interface on the system bus (the policy is installed for you).";
      };
      httpListen = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "127.0.0.1:7870";
        description = ''
          Optional TCP address for the control API (the unix socket
          {file}`${controlSocket}` is always there). Requires {option}`control.tokenFile`.
        '';
      };
      tokenFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "File with the bearer token for {option}`control.httpListen`, loaded with `LoadCredential`.";
      };
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to validate the generated config at build time with
        {command}`sd-webui-supervisor check-config`. Turn off only to work
        around a problem of the checker; the service checks again at start.
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = checkedConfig;
      defaultText = lib.literalMD "the generated and checked config file";
      description = "The supervisor's config file, as installed at {file}`${configPath}`.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = unusedKinds == [ ];
        message = lib.concatMapStringsSep "\n" (
          kind:
          let
            flavors = flavorsFor kind;
          in
          "services.sd-webui-forge.models.${kind}: flavor \"${cfg.flavor}\" does not use model kind \"${kind}\"; "
          + (
            if flavors == [ ] then
              "no flavor uses it. "
            else
              "it is used by ${lib.concatStringsSep ", " flavors}. "
          )
          + "Kinds for ${cfg.flavor}: ${lib.concatStringsSep ", " kindsOf.${cfg.flavor}}. "
          + "Rename the kind, change services.sd-webui-forge.flavor, or remove these models."
        ) unusedKinds;
      }
      {
        assertion = lib.all (kind: badNames cfg.models.${kind} == [ ]) (builtins.attrNames cfg.models);
        message = lib.concatStringsSep "\n" (
          lib.mapAttrsToList (
            kind: names:
            lib.concatMapStringsSep "\n" (
              n:
              ''services.sd-webui-forge.models.${kind}."${n}": a model file name must be a plain name (no "/", no leading "."), like "model.safetensors".''
            ) (badNames names)
          ) cfg.models
        );
      }
      {
        assertion = badNames cfg.extensions == [ ];
        message = lib.concatMapStringsSep "\n" (
          n:
          ''services.sd-webui-forge.extensions."${n}": an extension name is a directory name: no "/", no leading ".".''
        ) (badNames cfg.extensions);
      }
      {
        assertion = cfg.gpus == null || lib.unique cfg.gpus == cfg.gpus;
        message = "services.sd-webui-forge.gpus: ${builtins.toJSON cfg.gpus} lists a GPU more than once; list each index once.";
      }
      {
        assertion = !(cfg.environment ? CUDA_VISIBLE_DEVICES);
        message = "services.sd-webui-forge.environment.CUDA_VISIBLE_DEVICES: set services.sd-webui-forge.gpus instead, so the unit's device filter allows the same GPUs.";
      }
      {
        assertion = misplacedFlags == [ ];
        message = lib.concatMapStringsSep "\n" (
          a:
          "services.sd-webui-forge.extraArgs: \"${a}\" is set by the supervisor; use services.sd-webui-forge.${
            managedFlags.${flagName a}
          } instead."
        ) misplacedFlags;
      }
      {
        assertion = cfg.control.httpListen == null || cfg.control.tokenFile != null;
        message = "services.sd-webui-forge.control.httpListen needs services.sd-webui-forge.control.tokenFile: the TCP control API only accepts requests with a bearer token.";
      }
      {
        assertion = cfg.control.tokenFile == null || cfg.control.httpListen != null;
        message = "services.sd-webui-forge.control.tokenFile is only used with services.sd-webui-forge.control.httpListen; set that too, or remove the token file.";
      }
      {
        assertion =
          !builtins.elem cfg.dataDir [
            ""
            "/var"
            "/var/lib"
          ]
          && !lib.hasPrefix builtins.storeDir cfg.dataDir;
        message = "services.sd-webui-forge.dataDir: \"${cfg.dataDir}\" must be a writable directory of its own, e.g. /var/lib/sd-webui-forge.";
      }
    ];

    warnings = optional (cfg.openFirewall && !cfg.listen) ''
      services.sd-webui-forge.openFirewall opens port ${toString cfg.port}, but the UI listens on loopback only; set services.sd-webui-forge.listen = true, or drop openFirewall.'';

    environment.etc."sd-webui-forge/config.toml".source = checkedConfig;

    systemd.services.${serviceName} = import ./nix/unit.nix {
      supervisorBin = "${cfg.supervisorPackage}/bin/sd-webui-supervisor";
      configFile = checkedConfig;
      inherit configPath credentials;
      inherit (cfg)
        user
        group
        dataDir
        dataPermissions
        gpus
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

    networking.firewall.allowedTCPPorts = optional cfg.openFirewall cfg.port;
  };
}
