"""What the demo's synthetic speakers say.

Lines are grouped into `N_SETS` script sets, and classes into `SESSIONS`, like the scripted
recording sessions of the AI Hub data: a speaker records one session of one set, and every line
belongs to one set, so the clips joined by a speaker or a transcript stay small groups (a set, a
session, a language) and a leak-free split (by speaker and by transcript) can still put every
class in every split, with many voices in each. The i-th line of a list goes to set i % N_SETS;
each emergency class has N_SETS lines in each language, one per set.
"""

from __future__ import annotations

from ensemble.demodata.emergency_lines import EMERGENCY_LINES

__all__ = [
    "EMERGENCY_LINES",
    "EVERYDAY",
    "EVERYDAY_LINES",
    "GENERIC_CALLS",
    "N_SETS",
    "SESSIONS",
    "line_set",
    "session",
]

N_SETS = 10
EVERYDAY = "everyday"  # the session of calm talk in normal clips
SESSIONS = (
    ("sexual_assault", "robbery", "theft", "violence"),
    ("trapped", "electrical_accident", "gas_accident", "fire"),
    ("medical_emergency", "typhoon", "earthquake", "fall", "collapse", "help_request"),
    (EVERYDAY,),
)

# Calls for help that may follow a class line, in any emergency class.
GENERIC_CALLS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("살려주세요!", "도와주세요!", "누가 좀 도와주세요!", "백십구 불러주세요!"),
    ("Help!", "Help me!", "Call nine one one!", "Somebody help!"),
)

# Calm everyday lines for normal clips: (Korean, English).
EVERYDAY_LINES: tuple[tuple[str, ...], tuple[str, ...]] = (
    (
        "오늘 날씨가 참 좋네요.",
        "저녁은 된장찌개 먹을까요?",
        "텔레비전 좀 켜 줄래요?",
        "내일 병원 예약이 몇 시였죠?",
        "엄마, 저 이따가 전화할게요.",
        "빨래는 내가 널어 놓을게.",
        "커피 한 잔 하실래요?",
        "주말에 시장에 같이 가요.",
        "이 드라마 정말 재미있네요.",
        "창문 좀 열어 주세요, 답답하네요.",
        "손주가 다음 주에 온대요.",
        "우유가 다 떨어졌어요.",
        "버스 정류장이 어디예요?",
        "공원에 산책 가요.",
        "라디오 소리 좀 줄여 주세요.",
        "오늘 저녁에 뭐 먹을까요?",
        "설거지는 제가 할게요.",
        "택배가 왔나 봐요.",
        "약 드실 시간이에요.",
        "비가 올 것 같아요, 우산 챙기세요.",
        "이번 주말에 등산 갈래요?",
        "청소기 좀 돌려야겠어요.",
        "세탁기 다 돌았나 봐요.",
        "뉴스 좀 보자.",
        "김치찌개 맛있네요.",
        "아침에 운동 다녀왔어요.",
        "다음 달에 여행 가요.",
        "전화 왔어요, 받아 보세요.",
        "화분에 물 줬어요?",
        "오늘은 일찍 자야겠어요.",
    ),
    (
        "The weather is lovely today.",
        "What should we have for dinner?",
        "Could you turn on the TV?",
        "I'll call you back later.",
        "Let's go to the market this weekend.",
        "Would you like some tea?",
        "The bus should be here soon.",
        "I'm going for a walk in the park.",
        "Did you water the plants?",
        "This show is really good.",
        "I'll do the dishes tonight.",
        "The package arrived this morning.",
        "It's time for your medicine.",
        "Take an umbrella, it might rain.",
        "Let's watch a movie tonight.",
        "The laundry is done.",
        "I went jogging this morning.",
        "We're visiting grandma on Sunday.",
        "Can you pass the salt?",
        "I'm going to bed early tonight.",
    ),
)


def line_set(index: int) -> int:
    """The script set of the `index`-th line of a list."""
    return index % N_SETS


def session(key: str) -> int:
    """The recording session of an emergency class's lines, or of `EVERYDAY` talk."""
    return next(i for i, keys in enumerate(SESSIONS) if key in keys)
