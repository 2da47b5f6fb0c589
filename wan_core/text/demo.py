"""Tiny stand-ins for tests and the demo: built-in sentences for the demo tokenizer and a tiny random UMT5.

Nothing here is downloaded: the tokenizer is trained at run time on the sentences below (English and Chinese), the
model is a random `UMT5EncoderModel` of `TINY_UMT5_CONFIG`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import UMT5EncoderModel

# The demo tokenizer is padded with `<extra_id_N>` tokens to exactly this many ids (as T5 tokenizers end with
# sentinels), so that the tiny model's vocabulary equals the tokenizer's size.
DEMO_VOCAB_SIZE = 1024

TINY_UMT5_CONFIG: dict = {
    "vocab_size": DEMO_VOCAB_SIZE,
    "d_model": 64,
    "num_layers": 2,
    "num_heads": 4,
    "d_kv": 16,
    "d_ff": 128,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
}
"""`transformers.UMT5Config` keyword arguments of the tiny model (the real one: vocab 256384, d_model 4096, d_kv 64,
64 heads, d_ff 10240, 24 layers, 32 buckets)."""


def build_tiny_umt5(vocab_size: int | None = None, *, seed: int = 0) -> UMT5EncoderModel:
    """A random `UMT5EncoderModel` of `TINY_UMT5_CONFIG` (fp32, CPU, eval mode); the global RNG is left untouched.

    Save `wan_core.text.keymap.to_official(model.state_dict())` with `torch.save` as
    `models_t5_umt5-xxl-enc-bf16.pth` to get a checkpoint in the official layout.
    """
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    kwargs = dict(TINY_UMT5_CONFIG)
    if vocab_size is not None:
        kwargs["vocab_size"] = int(vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(UMT5Config(**kwargs))
    return model.eval().requires_grad_(False)


ENGLISH = (
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    "A white cat wearing sunglasses sits on a surfboard at the beach, the sea breeze moving its fur.",
    "Summer beach vacation style, a golden retriever runs along the shore as waves roll in.",
    "A cinematic shot of a spaceship slowly landing on a red desert planet at dawn.",
    "Close-up of raindrops falling on green leaves in a quiet forest, soft light, shallow depth of field.",
    "An astronaut rides a horse across the surface of the moon, the Earth rising behind him.",
    "A busy night market in Taipei, steam rising from food stalls, people walking under lanterns.",
    "Aerial view of a winding river through autumn mountains, orange and yellow trees, morning fog.",
    "A little girl blows out the candles on her birthday cake while her family claps and laughs.",
    "Slow motion: a drop of milk splashes into a bowl of coffee, forming a perfect crown.",
    "A vintage red car drives down a coastal highway at sunset, camera tracking from the side.",
    "Timelapse of clouds moving over snowy peaks, stars appear as the sky turns dark blue.",
    "A chef tosses noodles in a flaming wok in a crowded restaurant kitchen.",
    "A panda eats bamboo in the rain, water dripping from its black and white fur.",
    "Underwater scene: a sea turtle glides past a colorful coral reef with schools of tiny fish.",
    "A robot barista pours latte art in a modern cafe, customers watching with curiosity.",
    "A paper boat floats down a street gutter after a storm, reflections of neon signs in the water.",
    "Children fly kites on a green hill on a windy spring afternoon.",
    "A samurai walks through a bamboo forest, wind blowing the leaves, dramatic lighting.",
    "An old fisherman repairs his net on a wooden dock while seagulls circle overhead.",
    "Fireworks explode over a city skyline on New Year's Eve, crowds cheering below.",
    "A hummingbird hovers near a bright pink flower, wings beating in slow motion.",
    "A train crosses a stone bridge through a snowy valley, smoke trailing behind it.",
    "A dancer spins on an empty stage, a single spotlight following her movements.",
    "Waves crash against a lighthouse during a thunderstorm, lightning flashing in the distance.",
    "A fox walks through fresh snow in a birch forest, its breath visible in the cold air.",
    "Hot air balloons rise over ancient temples at sunrise, golden light over the plains.",
    "A cup of tea steams on a wooden table next to an open book by the window.",
    "A street musician plays the violin in the rain as people hurry past with umbrellas.",
    "A dragon flies above medieval castle towers, its shadow sweeping over the village.",
    "Bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality, JPEG artifacts.",
    "Ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured limbs.",
    "Fused fingers, still picture, messy background, three legs, many people in the background, walking backwards.",
    "The quick brown fox jumps over the lazy dog; 0123456789 and some punctuation: (a), [b], {c}!?",
)

CHINESE = (
    "两只拟人化的猫咪穿着舒适的拳击装备，戴着鲜艳的手套，在聚光灯下的舞台上激烈对战。",
    "一只戴着墨镜的白猫坐在海滩的冲浪板上，海风吹动它的毛发。",
    "夏日海滩度假风格，一只金毛犬沿着海岸奔跑，海浪一波波涌来。",
    "电影感镜头，一艘宇宙飞船在黎明时分缓缓降落在红色沙漠星球上。",
    "雨滴落在安静森林中绿色树叶上的特写，柔和的光线，浅景深。",
    "一位宇航员骑着马穿过月球表面，地球在他身后升起。",
    "台北热闹的夜市，小吃摊冒着热气，人们在灯笼下行走。",
    "航拍秋天山间蜿蜒的河流，橙色和黄色的树木，清晨的薄雾。",
    "小女孩吹灭生日蛋糕上的蜡烛，家人们鼓掌欢笑。",
    "慢镜头：一滴牛奶溅入一碗咖啡中，形成完美的皇冠。",
    "一辆复古红色汽车在日落时沿着海岸公路行驶，镜头从侧面跟拍。",
    "延时摄影，云朵掠过雪山之巅，天空变成深蓝色时星星出现。",
    "厨师在拥挤的餐厅厨房里用燃着火焰的炒锅翻炒面条。",
    "一只熊猫在雨中吃竹子，水珠从它黑白相间的毛上滴落。",
    "水下场景：一只海龟游过五彩斑斓的珊瑚礁，身边是成群的小鱼。",
    "机器人咖啡师在现代咖啡馆里拉花，顾客们好奇地看着。",
    "暴雨过后，一只纸船顺着街边水沟漂流，水面映着霓虹灯的倒影。",
    "春天有风的下午，孩子们在绿色的山坡上放风筝。",
    "一位武士走过竹林，风吹动竹叶，戏剧性的光影。",
    "老渔夫在木码头上修补渔网，海鸥在头顶盘旋。",
    "除夕夜城市天际线上空烟花绽放，下面的人群欢呼。",
    "一只蜂鸟在鲜艳的粉色花朵旁悬停，翅膀以慢动作扇动。",
    "一列火车穿过雪谷中的石桥，身后拖着长长的烟雾。",
    "舞者在空荡的舞台上旋转，一束追光跟随着她的动作。",
    "雷雨中海浪拍打着灯塔，远处闪电划过。",
    "一只狐狸走过白桦林中的新雪，冷空气中能看到它呼出的气。",
    "日出时热气球在古老的寺庙上空升起，金色的阳光洒在平原上。",
    "窗边的木桌上放着一杯冒着热气的茶和一本打开的书。",
    "街头音乐家在雨中拉小提琴，人们撑着伞匆匆走过。",
    "一条龙飞过中世纪城堡的塔楼，它的影子掠过村庄。",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，",
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，",
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走。",
)

_SUBJECTS = (
    ("a cat", "一只猫"),
    ("two dogs", "两只狗"),
    ("an old man", "一位老人"),
    ("a young woman", "一个年轻女子"),
    ("a red car", "一辆红色汽车"),
    ("a small boat", "一艘小船"),
    ("a white horse", "一匹白马"),
    ("a robot", "一个机器人"),
    ("a child", "一个孩子"),
    ("a bird", "一只鸟"),
)
_ACTIONS = (
    ("runs across", "跑过"),
    ("walks slowly through", "慢慢走过"),
    ("dances in", "在这里跳舞："),
    ("flies over", "飞越"),
    ("sits quietly in", "安静地坐在"),
)
_PLACES = (
    ("a sunny park", "阳光明媚的公园"),
    ("the snowy mountains", "白雪覆盖的山脉"),
    ("a busy city street", "繁忙的城市街道"),
    ("the ocean at sunset", "日落时的海洋"),
    ("a dark forest", "黑暗的森林"),
)

# Characters that every demo tokenizer knows even when the sentences above do not use them: printable ASCII and
# a few hundred of the most frequent Chinese characters.
ASCII_ALPHABET = tuple(chr(c) for c in range(33, 127))
COMMON_CHINESE = tuple(
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天"
    "而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些"
    "与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相"
    "次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立"
    "马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共"
    "风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快"
    "条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李"
    "息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯"
    "专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴切哥般食你好文"
)


def demo_sentences() -> list[str]:
    """A few hundred sentences, half English, half Chinese, in a fixed order."""
    out = list(ENGLISH) + list(CHINESE)
    for (s_en, s_zh), (a_en, a_zh), (p_en, p_zh) in itertools.product(_SUBJECTS, _ACTIONS, _PLACES):
        out.append(f"{s_en.capitalize()} {a_en} {p_en}.")
        out.append(f"{s_zh}{a_zh}{p_zh}。")
    return out
