# The options of services.sd-webui-forge, shared by module.nix (the NixOS
# service) and ./image.nix (the container image), so that one set of settings
# means the same thing on a NixOS host and in a container. What they mean for
# the supervisor's config file is ./config.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.sd-webui-forge;
  defaultName = "sd-webui-forge";
  inherit (import ./config.nix { inherit lib; }) controlSocket;

  settingsFormat = pkgs.formats.toml { };

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
  # The options of one image; `name` names an inline workflow's store file.
  imageOptions = name: {
    prompt = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Forge/AUTOMATIC1111: the prompt (required there).";
    };
    negativePrompt = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Forge/AUTOMATIC1111: the negative prompt.";
    };
    seed = mkOption {
      type = types.nullOr types.int;
      default = null;
      description = "Forge/AUTOMATIC1111: the seed; null or -1 lets the UI draw one once (the sidecar records it).";
    };
    steps = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Forge/AUTOMATIC1111: sampling steps (default 20).";
    };
    cfgScale = mkOption {
      type = types.nullOr (types.either types.int types.float);
      default = null;
      description = "Forge/AUTOMATIC1111: CFG scale (default 7).";
    };
    samplerName = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "DPM++ 2M";
      description = "Forge/AUTOMATIC1111: the sampler (default: the UI's).";
    };
    width = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Forge/AUTOMATIC1111: width in pixels, a multiple of 8 (default 512).";
    };
    height = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Forge/AUTOMATIC1111: height in pixels, a multiple of 8 (default 512).";
    };
    checkpoint = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "sd_xl_base_1.0.safetensors";
      description = ''
        Forge/AUTOMATIC1111: a file name declared in
        {option}`services.sd-webui-forge.models.checkpoints`; its target is
        part of the image's fingerprint (a new model file renders it again).
      '';
    };
    extra = mkOption {
      type = types.attrsOf settingsFormat.type;
      default = { };
      example = {
        scheduler = "Karras";
      };
      description = "Forge/AUTOMATIC1111: further `/sdapi/v1/txt2img` fields, passed through.";
    };
    workflow = mkOption {
      type = types.nullOr (types.either fileType (types.attrsOf types.anything));
      default = null;
      # An inline workflow (an attribute set) is written to the store as JSON;
      # a file is used as it is.
      apply =
        wf:
        if wf == null then
          null
        else if builtins.isAttrs wf && !(wf ? outPath) then
          "${pkgs.writeText "sd-webui-image-${name}-workflow.json" (builtins.toJSON wf)}"
        else
          "${wf}";
      description = ''
        ComfyUI (required there): an API-format workflow ("Export (API)"),
        as a JSON file or as a Nix attribute set (written to the store as
        JSON). The picture is its first SaveImage output.
      '';
    };
    inputs = mkOption {
      type = types.attrsOf settingsFormat.type;
      default = { };
      example = {
        "3.seed" = 42;
        "6.text" = "a cat";
      };
      description = ''ComfyUI: overrides of workflow inputs, `"<node id>.<input>" = value`.'';
    };
  };
  outputDir = "${cfg.dataDir}/outputs/declared";

  # The options of one [instances.<name>] (docs/instances.md).
  instanceOptions = {
    gpus = mkOption {
      type = types.nonEmptyListOf types.ints.unsigned;
      example = [ 0 ];
      description = ''
        The GPUs of this instance (`CUDA_VISIBLE_DEVICES`), as CUDA indices;
        a GPU belongs to one instance only. The unit's device filter allows
        the GPUs of all instances.
      '';
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--always-high-vram" ];
      description = ''
        Arguments of this instance, appended after
        {option}`services.sd-webui-forge.extraArgs`. The flags the
        supervisor sets (`--port`, `--listen`, `--data-dir`, ...) are
        rejected here too.
      '';
    };
    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
      };
      description = ''
        Environment of this instance, set over
        {option}`services.sd-webui-forge.environment`. Not
        `CUDA_VISIBLE_DEVICES`: that is {option}`gpus`.
      '';
    };
    port = mkOption {
      type = types.nullOr (types.ints.between 1 65535);
      default = null;
      example = 17861;
      description = ''
        This instance's private port on loopback, behind the front door; not
        {option}`services.sd-webui-forge.port`, and not another instance's.
        `null`: the supervisor picks a free port at start and keeps it.
      '';
    };
  };
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
      description = ''
        Whether the UI is reached on all interfaces; when false, on loopback
        only. With {option}`front.enable` (the default) this is the
        supervisor's own listener, and the UI itself always binds loopback.
      '';
    };

    port = mkOption {
      type = types.port;
      default = if cfg.flavor == "comfyui" then 8188 else 7860;
      defaultText = lib.literalExpression ''if flavor == "comfyui" then 8188 else 7860'';
      description = ''
        The UI's HTTP port, where clients and browsers connect. With
        {option}`front.enable` (the default) the supervisor listens here and
        the UI runs behind it on {option}`front.uiPort`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open {option}`port` in the firewall (useful with
        {option}`listen`). Only that port: the UI's private port
        ({option}`front.uiPort`) is on loopback and stays closed.
      '';
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
        every GPU. With {option}`instances`, leave it `null`: each instance
        names its GPUs.
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

    images = mkOption {
      type = types.attrsOf (types.submodule ({ name, ... }: { options = imageOptions name; }));
      default = { };
      example = lib.literalExpression ''
        {
          cat = {
            prompt = "a cat on a windowsill, golden hour";
            seed = 1234;
            steps = 25;
            width = 832;
            height = 1216;
            checkpoint = "sd_xl_base_1.0.safetensors";
          };
        }
      '';
      description = ''
        Declared pictures. The supervisor renders each through the running
        UI once it is ready and idle, one at a time, and writes
        {file}`<dataDir>/outputs/declared/<name>.png` with a sidecar
        {file}`<name>.json`. An image is rendered again only when its
        declaration or the model it uses changes; changing images never
        restarts the UI. Names: letters, digits, `-`, `_`, `.`. See
        {option}`services.sd-webui-forge.outputDir` to use the pictures
        elsewhere.
      '';
    };

    outputDir = mkOption {
      type = types.str;
      readOnly = true;
      default = outputDir;
      defaultText = lib.literalExpression ''"''${config.services.sd-webui-forge.dataDir}/outputs/declared"'';
      description = ''
        Where the declared images land (read-only): {file}`<name>.png` and
        {file}`<name>.json`. Other services read them from here; they need
        read access to {option}`services.sd-webui-forge.dataDir` (e.g.
        `dataPermissions = "0750"` and membership in the group).
      '';
    };

    imageFiles = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      default = lib.mapAttrs (name: _: "${outputDir}/${name}.png") cfg.images;
      defaultText = lib.literalMD "`<outputDir>/<name>.png` for each declared image";
      description = "The PNG path of each declared image (read-only), for other Nix config.";
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
      maxConnections = mkOption {
        type = types.ints.between 1 65536;
        default = 128;
        description = ''
          Most connections each control listener serves at once; more are
          closed at once, and idle ones after 10 s, so a local user without the
          token cannot use up the supervisor's file descriptors.
        '';
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

    # [front]: every option null (or enable true) leaves the key out of the
    # config file, so the supervisor's own default applies.
    front = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether the supervisor itself listens on {option}`port` (the front
          door) and runs the UI behind it on a private loopback port. A
          restart of the UI or a self-upgrade of the supervisor is then never
          "connection refused": API requests are held until the UI is ready
          again, browsers get a page that reloads itself, websockets are
          closed with 1012 so that their clients reconnect. `false`: the UI
          binds {option}`port` itself, as in earlier versions.

          The front door is set up once, at start: a switch that changes a
          `front.*` option, or {option}`port` or {option}`listen` behind the
          front door, restarts the whole service once the UI is idle
          ({option}`restart.policy`), as a change of the unit does.
        '';
      };
      holdTimeout = mkOption {
        type = types.nullOr durationType;
        default = null;
        example = "15m";
        description = ''
          Longest time an API request is held while the UI is not ready
          (starting, restarting, waiting for its GPU); then it is answered
          503 with `Retry-After`. Long enough to cover a restart with a
          model load, so clients see a slow answer instead of an error. At
          most `"24h"`. `null`: the supervisor's default, `"5m"`.
        '';
      };
      maxHeld = mkOption {
        type = types.nullOr (types.ints.between 1 65536);
        default = null;
        description = ''
          Most requests held at once; more are answered 503 at once, so a
          client retrying in a loop cannot pile up connections while the UI
          is away. `null`: the supervisor's default, 1024.
        '';
      };
      maxConnections = mkOption {
        type = types.nullOr (types.ints.between 1 65536);
        default = null;
        description = ''
          Most client connections served at once; more are closed on
          accept, so a flood cannot use up the supervisor's file
          descriptors. `null`: the supervisor's default, 4096.
        '';
      };
      authFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/sd-webui-front-auth";
        description = ''
          File of credentials every request to {option}`port` must carry,
          one a line: `user:password` (HTTP Basic, browsers prompt for it)
          or a bare token (`Authorization: Bearer <token>`, for API clients).
          Every route is checked, websockets included; ComfyUI has no
          authentication of its own, so this is how to put it on a network.
          Give a path on the machine as a string (agenix, sops-nix,
          {file}`/run/secrets`): it is read by systemd (`LoadCredential`), so
          it may be readable by root only, and it must never be in the Nix
          store (a path literal in a flake is). Read once at start. Needs
          {option}`front.enable`. `null`: no authentication.
        '';
      };
      uiPort = mkOption {
        type = types.nullOr (types.ints.between 1 65535);
        default = null;
        example = 17860;
        description = ''
          The UI's private port on loopback, behind the front door; not
          {option}`port`. Pin it when something else on the machine must
          reach the UI directly. `null`: the supervisor picks a free port at
          start and keeps it, across a self-upgrade too. With
          {option}`instances`, leave it `null`: each instance has its own
          `port`.
        '';
      };
    };

    # [gpu]: only what differs from the supervisor's defaults is written.
    gpu = {
      inhibitSleep = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether the supervisor holds a systemd-logind sleep inhibitor lock
          while the UI's queue has jobs (running or waiting), so the machine
          does not suspend in the middle of a generation
          ({command}`systemd-inhibit --list` shows it while it is held).

          logind lets a service that does not run as root take the lock only
          with polkit's permission `org.freedesktop.login1.inhibit-block-sleep`:
          the module grants it to {option}`user` with a rule in
          {option}`security.polkit.extraConfig`, which takes effect where
          polkit is on ({option}`security.polkit.enable`, which desktop
          environments turn on). Without polkit the supervisor logs one
          warning and runs on without the lock. A switch that changes this
          applies at once (a reload), nothing restarts.
        '';
      };
      unloadAfter = mkOption {
        type = types.nullOr durationType;
        default = null;
        example = "30m";
        description = ''
          Once the UI's queue has been empty this long, its models are
          unloaded from the GPU (ComfyUI `POST /free`, Forge
          `POST /sdapi/v1/unload-checkpoint`), so a shared or desktop GPU gets
          its memory back; the next job loads them again. Not for A1111 (the
          config check refuses it). At most `"30d"`. `null`: never.
        '';
      };
    };

    # [health]: every option null leaves the key out of the config file, so the
    # supervisor's own default applies. All of it applies live on a switch.
    health = {
      stallTimeout = mkOption {
        type = types.nullOr (types.either durationType (types.enum [ "off" ]));
        default = null;
        example = "20m";
        description = ''
          A running job whose progress (Forge/A1111: the sampling step;
          ComfyUI: its progress messages, for prompts sent without a
          `client_id`) has not advanced for this long is interrupted. At most
          `"24h"`; `"off"` never interrupts. `null`: the supervisor's
          default, `"10m"`.
        '';
      };
      stallGrace = mkOption {
        type = types.nullOr durationType;
        default = null;
        example = "2m";
        description = ''
          A stalled job still without progress this long after its interrupt
          (a UI stuck in a CUDA call) restarts the UI at once. At most `"1h"`.
          `null`: the supervisor's default, `"1m"`.
        '';
      };
      gpuErrors = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = ''
          Whether a CUDA error in the UI's output ("an illegal memory
          access", an out-of-memory error no progress followed) restarts the
          UI once its queue is idle. `null`: the supervisor's default, `true`.
        '';
      };
    };

    # [kubernetes]: for the container image (nix/image.nix) run as a Pod.
    kubernetes = {
      podDeletionCost = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether the supervisor, running in a Kubernetes Pod, keeps the Pod's
          `controller.kubernetes.io/pod-deletion-cost` annotation at the number
          of jobs running and waiting in the UI, so that a scale-in removes
          idle pods first. It patches its own Pod through the API server with
          the Pod's service account, which needs `get` and `patch` on pods
          (deploy/kubernetes/rbac.yaml). Meant for the container image; on a
          NixOS host there is no cluster, and the supervisor logs one warning
          and does nothing. A change takes effect when the supervisor next
          starts.
        '';
      };
    };

    # [queue]: the journal of ComfyUI prompts; null leaves the key out (the
    # supervisor's default). Set up at the supervisor's start.
    queue = {
      keep = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = ''
          Whether ComfyUI prompts accepted through the front door are
          journaled in the data directory and sent again to a new UI after a
          restart, a crash or a reboot (each once, with its own prompt id).
          `null`: the supervisor's default, `true` (`false` with
          {option}`instances`, which refuse `true`).
        '';
      };
      history = mkOption {
        type = types.nullOr (types.ints.between 1 10000);
        default = null;
        example = 1000;
        description = ''
          How many finished prompts the journal remembers (without their
          bodies) for `queue list`. `null`: the supervisor's default, 200.
        '';
      };
    };

    # [instances.<name>]: one UI per GPU behind the one front door
    # (docs/instances.md); none, one UI as without them.
    instances = mkOption {
      type = types.attrsOf (types.submodule { options = instanceOptions; });
      default = { };
      example = lib.literalExpression ''
        {
          gpu0.gpus = [ 0 ];
          gpu1 = {
            gpus = [ 1 ];
            extraArgs = [ "--always-high-vram" ];
            port = 17861;
          };
        }
      '';
      description = ''
        Several UIs, one per GPU (or group of GPUs), behind the one front
        door, which routes each job to the least busy one: one address and
        one queue for the machine. Each instance is the UI of the other
        options with its own GPUs, private port, arguments and environment,
        and its own output folders; the models, extensions and settings are
        shared. Names: letters, digits, `-` and `_`, starting with a letter
        or digit, at most 32 characters; at most 16 instances.

        With instances, these must stay unset (the build stops otherwise):
        {option}`gpus` (each instance names its own),
        {option}`front.uiPort` (each instance has its own {option}`port`),
        {option}`front.enable` `= false` (the front door is the one queue),
        and {option}`queue.keep` `= true` (the prompt journal does not yet
        work with instances; it is off). A changed instance restarts alone,
        one at a time, when idle; adding or removing instances restarts the
        whole service once the UI is idle.
      '';
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

  };
}
